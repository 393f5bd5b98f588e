//! Spawn-to-exit of `/bin/true`, jailed vs a plain `Command`, median and p90
//! of [`RUNS`] runs each (after one warm-up of each). Run with
//! `cargo run --release -p agentic_jail --example spawn_bench`.

use std::time::{Duration, Instant};

use agentic_jail::{JailLimits, JailSpec, JailStdio, spawn};

/// Runs per variant.
const RUNS: usize = 50;

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.2} ms, p90 {:.2} ms, min {:.2} ms",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[0])
    )
}

#[tokio::main]
async fn main() {
    let tmp = std::env::temp_dir().join(format!("jail-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let spec = JailSpec {
        program: "/bin/true".into(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: "/tmp".into(),
        read_only: ["/usr", "/lib", "/lib64", "/bin"]
            .iter()
            .map(Into::into)
            .collect(),
        read_write: Vec::new(),
        private_tmp: tmp.clone(),
        listeners: Vec::new(),
        file_mounts: Vec::new(),
        limits: JailLimits::default(),
        stdio: JailStdio::Piped,
    };
    let mut plain = Vec::new();
    let mut jailed = Vec::new();
    for i in 0..=RUNS {
        let t = Instant::now();
        let status = tokio::process::Command::new("/bin/true")
            .env_clear()
            .status()
            .await
            .unwrap();
        assert!(status.success());
        if i > 0 {
            plain.push(t.elapsed());
        }
        let t = Instant::now();
        let mut j = spawn(&spec).await.unwrap();
        let report = j.wait().await.unwrap();
        assert_eq!(report.code, Some(0), "{report}");
        if i > 0 {
            jailed.push(t.elapsed());
        }
    }
    println!("plain  /bin/true: {}", summary(plain));
    println!("jailed /bin/true: {}", summary(jailed));
    std::fs::remove_dir_all(&tmp).ok();
}
