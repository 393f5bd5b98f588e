//! HTTP requests of plugins ignore the proxy environment. The variables
//! are set in this process, so this test has a binary of its own: it sets
//! them before it starts any thread (an environment variable set while
//! another thread reads the environment, e.g. in `getaddrinfo`, is a data
//! race).

mod support;

use serde_json::json;
use support::{Listener, abuse_home, beside_hello, bind};

/// The only test of this binary: nothing else runs beside it.
#[test]
fn requests_ignore_the_proxy_environment() {
    let proxy = bind();
    let target = bind();
    let proxy_addr = proxy.local_addr().expect("proxy address");
    // SAFETY: this is the only test of this binary and no runtime or other
    // thread of it is started yet (the harness's main thread only waits
    // for this one), so nothing reads the environment while it is written.
    #[allow(unsafe_code)]
    unsafe {
        for var in ["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"] {
            std::env::set_var(var, format!("http://{proxy_addr}"));
        }
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let proxy = Listener::serve(proxy, false);
            let target = Listener::serve(target, false);
            let address = target.addr.to_string();
            let (home, _s) = abuse_home(
                &format!("hosts = [{address:?}]"),
                "",
                &["interface:http", &format!("host:{address}")],
            )
            .await;
            let out = beside_hello(
                &home,
                "http_get",
                json!({"url": format!("http://{address}/")}),
            )
            .await
            .expect("a granted host");
            assert_eq!(out["status"], 200);
            assert_eq!(target.accepted(), 1);
            assert_eq!(proxy.accepted(), 0, "no request may go through a proxy");
        });
}
