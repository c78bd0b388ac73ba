//! The publisher's coalescing, driven through its channel as the watch tasks drive it.

use std::time::{Duration, Instant};

use meshpath_model::ObjectRef;

use super::aggregate::{Change, Item, KINDS};
use super::*;
use crate::manifests::ParsedObject;

fn slice(i: u32) -> Item {
    let id = ObjectRef::new("default", format!("web-{i}"));
    let slice = meshpath_model::EndpointSlice {
        id: id.clone(),
        service_name: "web".into(),
        ports: vec![],
        endpoints: vec![],
    };
    Item {
        id,
        result: Ok(Some(ParsedObject::EndpointSlice(slice))),
    }
}

fn msg(kind: ObjectKind, change: Change) -> Msg {
    Msg {
        kind,
        change,
        at: Instant::now(),
    }
}

fn publisher(
    debounce: Duration,
) -> (
    mpsc::UnboundedSender<Msg>,
    channel::Receiver<Arc<ClusterModel>>,
    JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let (model_tx, model_rx) = channel::channel(Arc::new(ClusterModel::default()));
    let (status_tx, _) = channel::channel(Arc::new(SourceStatus::default()));
    let p = Publisher {
        rx,
        model: model_tx,
        status: status_tx,
        debounce,
        aggregate: Aggregate::default(),
        published_once: false,
        changes: Default::default(),
        started: Instant::now(),
        metrics: Default::default(),
        held: Vec::new(),
    };
    (tx, model_rx, tokio::spawn(p.run()))
}

/// Counts how often the model channel changes until `want` slices are in the model.
async fn snapshots_until(rx: &mut channel::Receiver<Arc<ClusterModel>>, want: usize) -> usize {
    let mut seen = 0;
    loop {
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("a snapshot within 5 s")
            .expect("publisher alive");
        seen += 1;
        if rx.borrow_and_update().endpoint_slices.len() == want {
            return seen;
        }
    }
}

#[tokio::test]
async fn nothing_is_published_before_every_kind_is_listed() {
    let (tx, mut rx, _task) = publisher(Duration::from_millis(1));
    for kind in &KINDS[..KINDS.len() - 1] {
        tx.send(msg(*kind, Change::Init)).unwrap();
        tx.send(msg(*kind, Change::InitDone)).unwrap();
    }
    tx.send(msg(ObjectKind::EndpointSlice, Change::Apply(slice(1))))
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    assert!(early.is_err(), "published with DestinationRules not listed");
    tx.send(msg(ObjectKind::DestinationRule, Change::Absent))
        .unwrap();
    assert_eq!(snapshots_until(&mut rx, 1).await, 1);
}

#[tokio::test]
async fn a_burst_of_events_becomes_one_snapshot() {
    let (tx, mut rx, _task) = publisher(Duration::from_millis(50));
    for kind in KINDS {
        tx.send(msg(kind, Change::Absent)).unwrap();
    }
    assert_eq!(snapshots_until(&mut rx, 0).await, 1);
    // 500 slice changes within a few ms, as an endpoint storm delivers them.
    let first = msg(ObjectKind::EndpointSlice, Change::Apply(slice(0)));
    let first_at = first.at;
    tx.send(first).unwrap();
    for i in 1..500 {
        tx.send(msg(ObjectKind::EndpointSlice, Change::Apply(slice(i))))
            .unwrap();
    }
    snapshots_until(&mut rx, 500).await;
    // One snapshot holds them all: it is stamped with the burst's first event. (The channel
    // alone could hide extra snapshots from a slow reader; the stamp cannot lie.)
    assert_eq!(rx.borrow().received, Some(first_at));
}

#[tokio::test]
async fn an_unchanged_relist_publishes_nothing() {
    let (tx, mut rx, _task) = publisher(Duration::from_millis(1));
    for kind in KINDS {
        tx.send(msg(kind, Change::Init)).unwrap();
        if kind == ObjectKind::EndpointSlice {
            tx.send(msg(kind, Change::InitApply(slice(1)))).unwrap();
        }
        tx.send(msg(kind, Change::InitDone)).unwrap();
    }
    assert_eq!(snapshots_until(&mut rx, 1).await, 1);
    tx.send(msg(ObjectKind::EndpointSlice, Change::Init))
        .unwrap();
    tx.send(msg(ObjectKind::EndpointSlice, Change::InitApply(slice(1))))
        .unwrap();
    tx.send(msg(ObjectKind::EndpointSlice, Change::InitDone))
        .unwrap();
    let again = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    assert!(again.is_err(), "an identical relist was published");
}

#[tokio::test]
async fn snapshots_say_what_changed_since_the_ones_before_and_edit_in_place() {
    let (tx, mut rx, _task) = publisher(Duration::from_millis(1));
    for kind in KINDS {
        tx.send(msg(kind, Change::Absent)).unwrap();
    }
    snapshots_until(&mut rx, 0).await;
    let first = rx.borrow().changes.clone().expect("numbered").seq;
    for i in 0..2 {
        tx.send(msg(ObjectKind::EndpointSlice, Change::Apply(slice(i))))
            .unwrap();
        snapshots_until(&mut rx, i as usize + 1).await;
    }
    let held = rx.borrow_and_update().clone();
    let changes = held.changes.clone().expect("numbered");
    // Two snapshots since the first, whichever the reader saw; both changed web's slices.
    assert_eq!(changes.seq, first + 2);
    let since = changes.since(first).expect("kept");
    assert!(!since.everything);
    assert_eq!(since.services, [ObjectRef::new("default", "web")].into());
    // A snapshot a reader holds is never edited under it: the next change is made in a copy.
    tx.send(msg(ObjectKind::EndpointSlice, Change::Apply(slice(2))))
        .unwrap();
    snapshots_until(&mut rx, 3).await;
    assert_eq!(held.endpoint_slices.len(), 2);
    assert_eq!(rx.borrow().endpoint_slices.len(), 3);
}

#[tokio::test]
async fn events_wait_for_a_held_snapshot_instead_of_copying_it() {
    let (tx, mut rx, _task) = publisher(Duration::from_millis(1));
    for kind in KINDS {
        tx.send(msg(kind, Change::Absent)).unwrap();
    }
    snapshots_until(&mut rx, 0).await;
    let held = rx.borrow_and_update().clone();
    let at = Arc::as_ptr(&held);
    tx.send(msg(ObjectKind::EndpointSlice, Change::Apply(slice(0))))
        .unwrap();
    // Well within the hold limit: nothing is published while the agent holds the snapshot.
    let early = tokio::time::timeout(HOLD_LIMIT / 5, rx.changed()).await;
    assert!(early.is_err(), "published while the snapshot was held");
    assert!(held.endpoint_slices.is_empty());
    drop(held);
    snapshots_until(&mut rx, 1).await;
    assert_eq!(Arc::as_ptr(&rx.borrow()), at, "the model was copied");
}
