//! What `lion` checks and sets about the machine before anything else runs:
//! the CPU level the binary was built for, and how a closed stdout ends it.

/// The CPU features of x86-64-v3, the level `.cargo/config.toml` builds
/// for (`target-cpu=x86-64-v3`): any of them may be used anywhere in the
/// binary, so a CPU without one dies with SIGILL unless lion stops first.
#[cfg(target_arch = "x86_64")]
const X86_64_V3: [&str; 9] = [
    "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave",
];

/// The x86-64-v3 features `has` says the CPU lacks, in order.
#[cfg(target_arch = "x86_64")]
fn missing_v3(has: impl Fn(&str) -> bool) -> Vec<&'static str> {
    X86_64_V3.into_iter().filter(|f| !has(f)).collect()
}

/// Whether this CPU runs the instructions the binary was built with; if
/// not, the one-line message saying so.
pub fn cpu_check() -> Result<(), String> {
    #[cfg(target_arch = "x86_64")]
    {
        // Only when built for the level (not every build is).
        if cfg!(target_feature = "avx2") {
            let missing = missing_v3(|f| match f {
                "avx" => std::arch::is_x86_feature_detected!("avx"),
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                "bmi1" => std::arch::is_x86_feature_detected!("bmi1"),
                "bmi2" => std::arch::is_x86_feature_detected!("bmi2"),
                "f16c" => std::arch::is_x86_feature_detected!("f16c"),
                "fma" => std::arch::is_x86_feature_detected!("fma"),
                "lzcnt" => std::arch::is_x86_feature_detected!("lzcnt"),
                "movbe" => std::arch::is_x86_feature_detected!("movbe"),
                "xsave" => std::arch::is_x86_feature_detected!("xsave"),
                _ => false,
            });
            if !missing.is_empty() {
                return Err(format!(
                    "this lion was built for x86-64-v3 CPUs, and this CPU lacks {}: rebuild \
                     without `target-cpu=x86-64-v3` in .cargo/config.toml",
                    missing.join(", ")
                ));
            }
        }
    }
    Ok(())
}

/// Lets a closed stdout end the process quietly, as it ends `cat` (`lion
/// events list | head`): Rust ignores SIGPIPE, so every print after the
/// reader left would panic instead (a kernel, `lion run`, whose stdout is
/// closed ends either way; what it committed is recovered at its next
/// start).
#[allow(unsafe_code)]
pub fn default_sigpipe() {
    // SAFETY: called first thing in `main`, before any thread exists;
    // restoring a signal's default disposition touches no Rust state.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_cpu_without_avx2_or_fma_is_named_before_anything_runs() {
        use super::missing_v3;
        assert!(missing_v3(|_| true).is_empty());
        assert_eq!(
            missing_v3(|f| f != "avx2" && f != "fma"),
            vec!["avx2", "fma"]
        );
        assert_eq!(missing_v3(|_| false).len(), 9);
    }
}
