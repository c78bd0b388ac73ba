//! Config changes: built off the request path, only when the routing really changed, and
//! swapped in whole.

use super::*;
use meshpath_model::l7::LoadBalancer::RoundRobin;

fn to_a(a: SocketAddr) -> L7Config {
    config(vec![], vec![(key("svc"), cluster(&[a], RoundRobin))])
}

#[tokio::test]
async fn an_equal_config_is_not_rebuilt() {
    let a = backend("a").await;
    let h = start(to_a(a.addr)).await;
    // Separately built, same content: nothing to apply (an outlier ejection's reconcile).
    assert!(!h.tx.proxy.apply(Arc::new(to_a(a.addr))));
    let b = backend("b").await;
    assert!(h.tx.proxy.apply(Arc::new(to_a(b.addr))));
    assert_eq!(h.get("/").await.body, "b");
}

#[tokio::test]
async fn a_config_sent_on_the_channel_is_applied_by_the_follower() {
    let (a, b) = (backend("a").await, backend("b").await);
    let (tx, rx) = watch::channel(Arc::new(to_a(a.addr)));
    let proxy = Proxy::new(rx);
    let next = Arc::new(to_a(b.addr));
    tx.send(next.clone()).unwrap();
    proxy.wait_applied(&next).await;
    assert!(!proxy.apply(next), "already served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_keep_flowing_while_configs_change() {
    let (a, b) = (backend("a").await, backend("b").await);
    let h = Arc::new(start(to_a(a.addr)).await);
    let swapper = {
        let h = h.clone();
        let (a, b) = (a.addr, b.addr);
        tokio::task::spawn_blocking(move || {
            for i in 0..200 {
                h.tx.proxy
                    .apply(Arc::new(to_a(if i % 2 == 0 { b } else { a })));
            }
        })
    };
    let mut served = 0;
    while !swapper.is_finished() || served < 50 {
        let got = h.get("/").await;
        assert_eq!(got.status, 200, "{got:?}");
        served += 1;
    }
    swapper.await.unwrap();
    assert!(a.count() + b.count() >= 50);
}
