//! A throwaway PostgreSQL cluster for tests: one shared per test process
//! (and one of its own for a test that restarts it), made
//! with `initdb` and started with `pg_ctl` on a free port, as the
//! `postgres` user when the tests run as root (PostgreSQL refuses to run as
//! root), stopped and removed when the process exits. Each test takes a
//! fresh database of it.
//!
//! Removal does not depend on the test process ending well: a watchdog
//! shell waits for the end of a pipe only the test process holds, which the
//! operating system closes however that process ends (even SIGKILL).

#![allow(dead_code)] // each test binary uses part of it

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Folders of test clusters start with this, in the system's temp folder.
const PREFIX: &str = "lion-pg-test-";

/// A running cluster.
pub struct Cluster {
    /// The cluster's folder: `data/`, the log and the socket.
    root: PathBuf,
    /// PostgreSQL's programs.
    bin: PathBuf,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
    /// The write end of the watchdog's pipe, held until this cluster is
    /// dropped or this process ends, whichever is first.
    _watchdog: Option<std::process::ChildStdin>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// The process's cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| Cluster::create("shared"))
}

/// A cluster of one test's own, for a test that restarts it (the shared
/// one serves tests running beside it); stopped and removed when dropped.
pub fn private(name: &str) -> Cluster {
    Cluster::create(name)
}

/// True when this process runs as root (so PostgreSQL runs as `postgres`).
fn root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A command run as the cluster's owner.
fn as_owner(program: &Path) -> Command {
    if root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// The folder holding PostgreSQL's programs: `LION_PG_BIN`, else the
/// newest `/usr/lib/postgresql/*/bin`, else what `pg_config` names.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LION_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    let out = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("PostgreSQL is not installed: no /usr/lib/postgresql/*/bin and no pg_config");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Runs `cmd`, panicking with its output if it fails.
fn run(cmd: &mut Command, what: &str) {
    let out = cmd.stdin(Stdio::null()).output().expect(what);
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl Cluster {
    /// Makes and starts a cluster.
    fn create(name: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("cluster folder");
        if root() {
            run(
                Command::new("chown").arg("postgres:").arg(&dir),
                "chown the cluster folder",
            );
        }
        let root = dir;
        let bin = bin_dir();
        run(
            as_owner(&bin.join("initdb"))
                .arg("-D")
                .arg(root.join("data"))
                .args(["-U", "lion", "-A", "trust", "-E", "UTF8", "--locale=C"])
                .arg("--no-sync"),
            "initdb",
        );
        let mut cluster = Cluster {
            root,
            bin,
            port: 0,
            _watchdog: None,
        };
        // The port is free when chosen; another process may take it before
        // PostgreSQL binds it, so try a few.
        for attempt in 0.. {
            cluster.port = free_port();
            if cluster.try_start() {
                break;
            }
            assert!(attempt < 4, "PostgreSQL did not start: {}", cluster.log());
        }
        cluster._watchdog = Some(cluster.watchdog());
        cluster
    }

    /// Starts the shell that stops and removes the cluster once this
    /// process is gone; returns the pipe that keeps it waiting.
    fn watchdog(&self) -> std::process::ChildStdin {
        let owner = if root() {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "cat >/dev/null; {owner}'{}' -D '{}' -w -m immediate stop; rm -rf '{}'",
            self.bin.join("pg_ctl").display(),
            self.root.join("data").display(),
            self.root.display()
        );
        // Never waited for: it outlives this process by design.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster's watchdog");
        child.stdin.take().expect("the watchdog's pipe")
    }

    /// Starts the cluster on its port; false if it did not come up.
    fn try_start(&self) -> bool {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} \
             -c fsync=off -c max_connections=300 -c shared_buffers=64MB",
            self.port,
            self.root.display()
        );
        as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.root.join("data"))
            .arg("-l")
            .arg(self.root.join("log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The server's log, for a failure message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("log")).unwrap_or_default()
    }

    /// The URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://lion@127.0.0.1:{}/{db}", self.port)
    }

    /// A new, empty database, named after `test`; returns its URL.
    pub async fn database(&self, test: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name: String = format!("{test}_{n}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .take(60)
            .collect();
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
        let driver = tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create a test database");
        drop(client);
        let _ = driver.await;
        self.url(&name)
    }

    /// Turns TLS on (restarting the server): a certificate for 127.0.0.1
    /// signed by a certificate authority of this cluster's own, made with
    /// `openssl`; returns the authority's PEM file, for `sslrootcert`.
    pub async fn enable_tls(&self) -> PathBuf {
        let dir = self.root.join("tls");
        std::fs::create_dir_all(&dir).expect("tls folder");
        let openssl = |args: &[&str], what: &str| {
            run(Command::new("openssl").current_dir(&dir).args(args), what);
        };
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=lion test authority",
            ],
            "make a test certificate authority",
        );
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
            "make a server key",
        );
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("extensions");
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
            "sign the server certificate",
        );
        // The server reads its key only if its owner alone can.
        for file in ["server.crt", "server.key"] {
            let to = self.root.join("data").join(file);
            std::fs::copy(dir.join(file), &to).expect("copy into the data folder");
            if root() {
                run(Command::new("chown").arg("postgres:").arg(&to), "chown");
            }
            run(Command::new("chmod").arg("600").arg(&to), "chmod");
        }
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
                .await
                .expect("connect to the test cluster");
        let driver = tokio::spawn(connection);
        for statement in [
            "ALTER SYSTEM SET ssl_cert_file = 'server.crt'",
            "ALTER SYSTEM SET ssl_key_file = 'server.key'",
            "ALTER SYSTEM SET ssl = on",
        ] {
            client.simple_query(statement).await.expect("turn TLS on");
        }
        drop(client);
        let _ = driver.await;
        // A restart, unlike a reload, has taken the settings when it returns
        // (the server keeps no pipe of this process open, as in `try_start`).
        let restarted = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.root.join("data"))
            .arg("-l")
            .arg(self.root.join("log"))
            .args(["-w", "-t", "60", "restart"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            restarted,
            "PostgreSQL did not restart with TLS: {}",
            self.log()
        );
        dir.join("ca.pem")
    }

    /// Runs `pg_ctl` with `args` on the cluster.
    fn pg_ctl(&self, args: &[&str]) {
        run(
            as_owner(&self.bin.join("pg_ctl"))
                .arg("-D")
                .arg(self.root.join("data"))
                .args(args),
            "pg_ctl",
        );
    }

    /// Stops the server as a crash would (`-m immediate`) and starts it
    /// again on the same port, waiting until it accepts connections.
    pub fn crash_and_restart(&self) {
        self.pg_ctl(&["-w", "-m", "immediate", "stop"]);
        assert!(
            self.try_start(),
            "PostgreSQL did not restart: {}",
            self.log()
        );
    }
}
