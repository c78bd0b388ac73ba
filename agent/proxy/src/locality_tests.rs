use std::net::SocketAddr;

use meshpath_model::l7::LocalityDistribute;

use super::*;

fn loc(region: &str, zone: &str, subzone: &str) -> Locality {
    Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: subzone.into(),
    }
}

fn eps(localities: &[Locality]) -> Vec<Endpoint> {
    localities
        .iter()
        .enumerate()
        .map(|(i, l)| Endpoint {
            addr: SocketAddr::from(([127, 0, 0, 1], 30_000 + i as u16)),
            labels: Default::default(),
            locality: l.clone(),
        })
        .collect()
}

fn levels(rt: &Option<LocalityRt>) -> Vec<Vec<usize>> {
    match rt {
        Some(LocalityRt::Levels { levels, .. }) => levels.clone(),
        other => panic!("not levels: {other:?}"),
    }
}

#[test]
fn endpoints_rank_by_distance_to_the_proxy() {
    let here = loc("r1", "z1", "s1");
    let e = eps(&[
        loc("r2", "z9", ""),
        loc("r1", "z1", "s1"),
        loc("r1", "z2", ""),
        loc("r1", "z1", "s2"),
    ]);
    let rt = LocalityRt::new(&LocalityLb::default(), true, 0, &here, &e);
    assert_eq!(levels(&rt), [vec![1], vec![3], vec![2], vec![0]]);
    // Without outlier detection Envoy never fails over: no levels.
    assert!(LocalityRt::new(&LocalityLb::default(), false, 0, &here, &e).is_none());
    // One level: nothing to do.
    let same = eps(&[here.clone(), here.clone()]);
    assert!(LocalityRt::new(&LocalityLb::default(), true, 0, &here, &same).is_none());
}

#[test]
fn failover_regions_come_before_other_regions() {
    let here = loc("r1", "z1", "");
    let e = eps(&[loc("r3", "a", ""), loc("r2", "b", ""), loc("r1", "z1", "")]);
    let lb = LocalityLb {
        failover: vec![("r1".into(), "r2".into())],
        ..LocalityLb::default()
    };
    let rt = LocalityRt::new(&lb, true, 0, &here, &e);
    assert_eq!(levels(&rt), [vec![2], vec![1], vec![0]]);
}

#[test]
fn failover_priority_labels_rank_by_matching_prefix() {
    let here = loc("r1", "z1", "");
    let mut e = eps(&[
        loc("r1", "z2", ""),
        loc("r1", "z1", ""),
        loc("r2", "z1", ""),
    ]);
    e[0].labels.insert("tier".into(), "gold".into());
    let lb = LocalityLb {
        failover_priority: vec!["tier=gold".into(), REGION_LABEL.into(), ZONE_LABEL.into()],
        ..LocalityLb::default()
    };
    let rt = LocalityRt::new(&lb, true, 0, &here, &e);
    // ep0 matches tier and region (1 left), the others match nothing (3 left).
    assert_eq!(levels(&rt), [vec![0], vec![1, 2]]);
}

#[test]
fn traffic_spills_as_the_first_level_loses_health() {
    let levels = vec![(0..10).collect::<Vec<_>>(), (10..20).collect()];
    let share = |ejected: usize| {
        let healthy = |i: &usize| *i >= ejected;
        (0..100)
            .filter(|r| level_for(&levels, 0, &healthy, *r).0 == 0)
            .count()
    };
    // 8 of 10 healthy: 1.4 × 80 % ≥ 100 %, no spill (the overprovisioning factor).
    assert_eq!(share(2), 100);
    // 5 of 10: health 70, the other 30 % to the next level.
    assert_eq!(share(5), 70);
    // None healthy: all to the next level.
    assert_eq!(share(10), 0);
}

#[test]
fn a_level_below_min_health_panics_when_traffic_spills() {
    let levels = vec![(0..10).collect::<Vec<_>>(), (10..12).collect()];
    // Level 0: 3 of 10 healthy (health 42); level 1: 0 of 2. Total health 42 < 100.
    let healthy = |i: &usize| (7..10).contains(i);
    let (level, panic) = level_for(&levels, 50, &healthy, 0);
    assert_eq!((level, panic), (0, true));
    let (_, calm) = level_for(&levels, 20, &healthy, 0);
    assert!(!calm);
}

#[test]
fn allowed_follows_the_drawn_level_and_health() {
    let here = loc("r1", "z1", "");
    let e = eps(&[loc("r1", "z1", ""), loc("r1", "z1", ""), loc("r2", "z", "")]);
    let rt = LocalityRt::new(&LocalityLb::default(), true, 0, &here, &e).unwrap();
    for _ in 0..50 {
        assert_eq!(rt.allowed(None, 3), Some(vec![true, true, false]));
    }
    // Both local ones ejected: everything to the remote one.
    let ejected = [true, true, false];
    assert_eq!(
        rt.allowed(Some(&ejected), 3),
        Some(vec![false, false, true])
    );
}

#[test]
fn distribute_weights_localities_and_drops_the_others() {
    let here = loc("r1", "z1", "");
    let e = eps(&[
        loc("r1", "z1", ""),
        loc("r1", "z2", ""),
        loc("r1", "z2", ""),
        loc("r9", "z", ""),
    ]);
    let lb = LocalityLb {
        distribute: vec![LocalityDistribute {
            from: "r1/z1/*".into(),
            to: vec![("r1/z1/*".into(), 80), ("r1/z2/*".into(), 20)],
        }],
        ..LocalityLb::default()
    };
    let rt = LocalityRt::new(&lb, false, 0, &here, &e).expect("applies");
    let mut counts = [0usize; 4];
    for _ in 0..10_000 {
        let mask = rt.allowed(None, 4).unwrap();
        for (i, on) in mask.iter().enumerate() {
            counts[i] += usize::from(*on);
        }
    }
    // Group z1 80 %, group z2 20 % (both endpoints allowed together); r9 never.
    assert_eq!(counts[3], 0);
    assert_eq!(counts[1], counts[2]);
    assert!((7_600..=8_400).contains(&counts[0]), "{counts:?}");
    // Another proxy locality: no `from` matches, nothing applies.
    assert!(LocalityRt::new(&lb, false, 0, &loc("r2", "", ""), &e).is_none());
}

#[test]
fn patterns_match_by_part() {
    let l = loc("us", "a", "x");
    assert!(matches(&l, "us/*"));
    assert!(matches(&l, "us/a/x"));
    assert!(matches(&l, "*"));
    assert!(!matches(&l, "us/b/*"));
}
