//! Network off: a loopback TCP or UDP listener the test opened sees nothing
//! from inside the jail, and an abstract unix socket opened outside is out of
//! reach; the same connections made outside a jail arrive (the controls).

use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};

use crate::{plain_python, python, run, scratch};

/// `ENETUNREACH` (empty network namespace) or `EACCES` (Landlock's TCP
/// connect right): either proves the connection never left the jail.
const REFUSED: [&str; 2] = ["errno:101\n", "errno:13\n"];

fn connect_code(port: u16) -> String {
    format!(
        "import socket\n\
         try:\n\
         \x20   socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\n\
         except OSError as e:\n\
         \x20   print('errno:%d' % e.errno)\n"
    )
}

#[tokio::test]
async fn tcp_to_a_loopback_listener_outside_never_arrives() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = scratch();

    let r = run(&python(s.path(), &connect_code(port))).await;
    assert!(REFUSED.contains(&r.stdout.as_str()), "{r:?}");
    let none = listener.accept().map(|_| ()).unwrap_err();
    assert_eq!(
        none.kind(),
        ErrorKind::WouldBlock,
        "the listener saw a connection"
    );

    // Control: the same program outside a jail reaches the listener.
    assert_eq!(plain_python(&connect_code(port)), "connected\n");
    assert!(listener.accept().is_ok());
}

#[tokio::test]
async fn udp_to_a_loopback_socket_outside_never_arrives() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let port = sock.local_addr().unwrap().port();
    let code = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         try:\n\
         \x20   s.sendto(b'ping', ('127.0.0.1', {port})); print('sent')\n\
         except OSError as e:\n\
         \x20   print('errno:%d' % e.errno)\n"
    );
    let s = scratch();
    let r = run(&python(s.path(), &code)).await;
    // No interface is up in the jail's namespace: nothing routes to 127.0.0.1.
    assert_eq!(r.stdout, "errno:101\n", "{r:?}");
    let mut buf = [0u8; 8];
    assert_eq!(
        sock.recv(&mut buf).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );

    assert_eq!(plain_python(&code), "sent\n");
    assert_eq!(sock.recv(&mut buf).unwrap(), 4);
}

#[tokio::test]
async fn an_abstract_unix_socket_opened_outside_is_unreachable() {
    let name = format!("lion-jail-test-{}", std::process::id());
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let listener = UnixListener::bind_addr(&addr).unwrap();
    listener.set_nonblocking(true).unwrap();
    let code = format!(
        "import socket\n\
         try:\n\
         \x20   s = socket.socket(socket.AF_UNIX); s.connect('\\0{name}'); print('connected')\n\
         except OSError as e:\n\
         \x20   print('errno:%d' % e.errno)\n"
    );
    let s = scratch();
    let r = run(&python(s.path(), &code)).await;
    // EAFNOSUPPORT (no unix sockets in the jail), and behind that
    // ECONNREFUSED (another network namespace's abstract names) or EPERM
    // (Landlock's abstract-socket scope).
    assert!(
        ["errno:97\n", "errno:111\n", "errno:1\n"].contains(&r.stdout.as_str()),
        "{r:?}"
    );
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );

    assert_eq!(plain_python(&code), "connected\n");
    assert!(listener.accept().is_ok());
}

/// The building block of a `host:PORT` grant: a listener lion holds inside
/// the jail's namespace, the granted name mapped to it by a hosts file lion
/// wrote. The program reaches lion's listener by name; another port on the
/// same address is refused (Landlock), and other names do not resolve.
#[tokio::test]
async fn a_granted_port_reaches_lions_listener_and_nothing_else() {
    let s = scratch();
    let hosts = s.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n127.0.0.1 upstream.test\n").unwrap();
    let nsswitch = s.path().join("nsswitch.conf");
    std::fs::write(&nsswitch, "hosts: files\n").unwrap();
    let code = "import socket\n\
                c = socket.create_connection(('upstream.test', 8443), timeout=30)\n\
                c.sendall(b'ping'); print(c.recv(4).decode(), flush=True)\n\
                try:\n\
                \x20   socket.create_connection(('upstream.test', 8444), timeout=5); print('connected')\n\
                except OSError as e:\n\
                \x20   print('errno:%d' % e.errno)\n\
                try:\n\
                \x20   socket.getaddrinfo('example.com', 80); print('resolved')\n\
                except OSError:\n\
                \x20   print('no name')\n";
    let mut spec = python(s.path(), code);
    spec.listeners = vec!["127.0.0.1:8443".parse().unwrap()];
    spec.file_mounts = vec![
        (hosts, "/etc/hosts".into()),
        (nsswitch, "/etc/nsswitch.conf".into()),
    ];
    let mut jailed = agentic_jail::spawn(&spec).await.unwrap();
    assert_eq!(jailed.listeners.len(), 1);
    let listener = jailed.listeners.pop().unwrap();
    // lion's side of the forward: here it answers itself.
    let lion = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"pong").unwrap();
        buf
    });
    let mut out = jailed.stdout.take().unwrap();
    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut out, &mut stdout)
        .await
        .unwrap();
    let report = jailed.wait().await.unwrap();
    assert_eq!(&lion.join().unwrap(), b"ping");
    assert_eq!(stdout, "pong\nerrno:13\nno name\n", "{report}");
}

/// A unix socket file outside the grants (think `docker.sock`) is out of
/// reach: Landlock ABI 7 does not govern connecting to socket files, so
/// unix sockets (like every family but IPv4, IPv6 and netlink) cannot be
/// created in the jail (`EAFNOSUPPORT`); `socketpair` still works.
#[tokio::test]
async fn a_unix_socket_file_outside_the_grants_is_unreachable() {
    let s = scratch();
    let path = s.path().join("outside.sock");
    let listener = UnixListener::bind(&path).unwrap();
    listener.set_nonblocking(true).unwrap();
    let code = format!(
        "import socket\n\
         a, b = socket.socketpair(); a.send(b'x'); print('pair', b.recv(1).decode())\n\
         try:\n\
         \x20   s = socket.socket(socket.AF_UNIX); s.connect({path:?}); print('connected')\n\
         except OSError as e:\n\
         \x20   print('errno:%d' % e.errno)\n\
         try:\n\
         \x20   socket.socket(40, socket.SOCK_STREAM); print('vsock')\n\
         except OSError as e:\n\
         \x20   print('errno:%d' % e.errno)\n",
        path = path.display().to_string()
    );
    let r = run(&python(s.path(), &code)).await;
    assert_eq!(r.stdout, "pair x\nerrno:97\nerrno:97\n", "{r:?}");
    assert_eq!(
        listener.accept().map(|_| ()).unwrap_err().kind(),
        ErrorKind::WouldBlock
    );

    // Control: outside a jail the same program connects.
    assert!(plain_python(&code).starts_with("pair x\nconnected\n"));
    assert!(listener.accept().is_ok());
}
