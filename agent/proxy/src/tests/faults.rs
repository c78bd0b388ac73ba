//! Fault injection and mirroring.

use std::time::Instant;

use super::*;

use meshpath_model::l7::Abort;
use meshpath_model::l7::LoadBalancer::RoundRobin;

#[tokio::test]
async fn abort_hits_its_percentage_with_envoys_body() {
    let a = backend("a").await;
    let mut r = route(vec![], to(&key("a")));
    r.fault = Some(Fault {
        delay: None,
        abort: Some((Abort::Http(503), 50.0)),
    });
    let h = start(config(
        vec![r],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    let mut aborted = 0;
    for _ in 0..2000 {
        let got = h.get("/").await;
        match got.status {
            503 => {
                aborted += 1;
                assert_eq!(got.body, "fault filter abort");
                assert_eq!(got.header("content-type"), Some("text/plain"));
            }
            200 => assert_eq!(got.body, "a"),
            s => panic!("unexpected status {s}"),
        }
    }
    // Binomial(2000, 0.5): sd ≈ 22; ±5 sd.
    assert!((890..=1110).contains(&aborted), "aborted {aborted} of 2000");
    assert_eq!(
        a.count(),
        2000 - aborted,
        "aborted requests never reach the backend"
    );
}

#[tokio::test]
async fn delay_then_abort() {
    let a = backend("a").await;
    let mut r = route(vec![], to(&key("a")));
    r.fault = Some(Fault {
        delay: Some((Duration::from_millis(200), 100.0)),
        abort: None,
    });
    let h = start(config(
        vec![r.clone()],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    ))
    .await;
    h.get("/warm").await;
    let t = Instant::now();
    assert_eq!(h.get("/").await.body, "a");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(600),
        "took {took:?}"
    );

    r.fault = Some(Fault {
        delay: Some((Duration::from_millis(100), 100.0)),
        abort: Some((Abort::Http(429), 100.0)),
    });
    h.tx.send(Arc::new(config(
        vec![r.clone()],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    )))
    .unwrap();
    let t = Instant::now();
    let got = h.get("/").await;
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!((got.status, got.body.as_str()), (429, "fault filter abort"));

    // 0%: never delayed.
    r.fault = Some(Fault {
        delay: Some((Duration::from_secs(5), 0.0)),
        abort: Some((Abort::Http(500), 0.0)),
    });
    h.tx.send(Arc::new(config(
        vec![r],
        vec![(key("a"), cluster(&[a.addr], RoundRobin))],
    )))
    .unwrap();
    let t = Instant::now();
    assert_eq!(h.get("/").await.status, 200);
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn mirror_gets_a_shadow_copy_without_slowing_the_client() {
    let main = backend("main").await;
    let slow = Arc::new(|_: &Seen, _| (200, Duration::from_millis(500)));
    let shadow = backend_with("shadow", slow).await;
    let mut r = route(vec![], to(&key("main")));
    r.mirrors = vec![Mirror {
        cluster: key("shadow"),
        percentage: 100.0,
    }];
    let clusters = vec![
        (key("main"), cluster(&[main.addr], RoundRobin)),
        (key("shadow"), cluster(&[shadow.addr], RoundRobin)),
    ];
    let h = start(config(vec![r.clone()], clusters.clone())).await;
    h.get("/warm").await;
    for i in 0..5 {
        let t = Instant::now();
        let req = Request::post(format!("/orders/{i}"))
            .header("host", "svc.default:8080")
            .body(Bytes::from(format!("order {i}")))
            .unwrap();
        let got = h.send(req).await;
        let took = t.elapsed();
        assert_eq!((got.status, got.body.as_str()), (200, "main"));
        assert!(
            took < Duration::from_millis(200),
            "client waited {took:?} for the mirror"
        );
    }
    // The copies arrive (the shadow sleeps before answering, not before recording).
    let deadline = Instant::now() + Duration::from_secs(3);
    while shadow.count() < 6 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(shadow.count(), 6);
    let copy = shadow
        .seen
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.uri == "/orders/3")
        .cloned()
        .expect("copy of /orders/3");
    assert_eq!(copy.host(), "svc.default-shadow:8080");
    assert_eq!(&copy.body[..], b"order 3");
    assert_eq!(main.last().host(), "svc.default:8080");

    // 0% never mirrors; 50% about half.
    r.mirrors = vec![Mirror {
        cluster: key("shadow"),
        percentage: 50.0,
    }];
    h.tx.send(Arc::new(config(vec![r], clusters))).unwrap();
    let before = shadow.count();
    for _ in 0..400 {
        h.get("/").await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mirrored = shadow.count() - before;
    assert!(
        (150..=250).contains(&mirrored),
        "mirrored {mirrored} of 400"
    );
}
