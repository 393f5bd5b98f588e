//! What `lion` checks and sets about the machine before anything else runs:
//! the CPU level the binary was built for, and how a closed stdout ends it.

// The build targets x86-64-v3 (`target-cpu=x86-64-v3` in
// `.cargo/config.toml`): the compiler may use AVX, AVX2, FMA, BMI and
// friends anywhere, even to copy a small array, so a CPU without them dies
// with SIGILL in whatever Rust code runs first — a check written in Rust
// would itself be compiled for the level it checks. So the check is
// assembly, run by the loader from `.preinit_array`, which runs before
// every `.init_array` entry (std's own argument set-up among them) and so
// before any Rust code: it
// asks CPUID for every feature of the level (and XGETBV for the operating
// system's support of AVX state) and, if one is missing, writes one line to
// stderr and exits with status 1.
//
// SAFETY: the routine runs once, from the loader, before any Rust code: it
// saves the one callee-saved register it uses (rbx, for CPUID), touches no
// memory but its own read-only message, and either returns or ends the
// process with exit_group.
#[cfg(all(target_arch = "x86_64", target_os = "linux", target_feature = "avx2"))]
#[allow(unsafe_code)]
mod cpu_check {
    std::arch::global_asm!(
        r#"
    .section .preinit_array,"aw"
    .p2align 3
    .quad 2f

    .text
    .p2align 4
2:
    push rbx
    // Basic leaf 7 must exist.
    xor eax, eax
    xor ecx, ecx
    cpuid
    cmp eax, 7
    jb 3f
    // Leaf 1, ECX: FMA (12), MOVBE (22), XSAVE (26), OSXSAVE (27), AVX (28), F16C (29).
    mov eax, 1
    xor ecx, ecx
    cpuid
    and ecx, 0x3C401000
    cmp ecx, 0x3C401000
    jne 3f
    // The OS saves SSE and AVX state (XCR0 bits 1 and 2).
    xor ecx, ecx
    xgetbv
    and eax, 6
    cmp eax, 6
    jne 3f
    // Leaf 7, EBX: BMI1 (3), AVX2 (5), BMI2 (8).
    mov eax, 7
    xor ecx, ecx
    cpuid
    and ebx, 0x128
    cmp ebx, 0x128
    jne 3f
    // Leaf 0x80000001, ECX: LZCNT (5).
    mov eax, 0x80000001
    xor ecx, ecx
    cpuid
    test ecx, 0x20
    jz 3f
    pop rbx
    ret
3:
    // write(2, message, length), then exit_group(1).
    mov eax, 1
    mov edi, 2
    lea rsi, [rip + {message}]
    mov edx, {length}
    syscall
    mov eax, 231
    mov edi, 1
    syscall
    ud2
"#,
        message = sym MESSAGE,
        length = const MESSAGE.len(),
    );

    /// What the check writes before it exits.
    static MESSAGE: [u8; 178] =
        *b"error: this lion was built for x86-64-v3 CPUs (AVX2, FMA, BMI1/2, \
        F16C, LZCNT, MOVBE) and this CPU lacks some of them: rebuild without \
        target-cpu=x86-64-v3 in .cargo/config.toml\n";
}

/// Ends the process as `cat` ends when its reader left (`lion events list |
/// head`): killed by SIGPIPE, so the shell sees status 141 and nothing is
/// printed.
///
/// SIGPIPE stays ignored for the rest of the process's life (Rust's
/// default): a kernel writes to sockets and to the pipes of MCP servers,
/// and a peer that went away must be an error there, never the death of
/// the kernel. Only a write to stdout that finds it closed comes here.
#[allow(unsafe_code)]
pub fn end_on_closed_stdout() -> ! {
    // SAFETY: restoring a signal's default disposition and raising it
    // touches no Rust state; the process ends at the raise.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    // Not reached: SIGPIPE's default action ends the process.
    std::process::exit(128 + libc::SIGPIPE)
}
