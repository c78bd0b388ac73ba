//! The slot layout of a frontend with VirtualService `tcp:` weights: shared by the map rendering
//! and the per-destination connection limits, which must agree on which slot is whose.

use std::collections::BTreeMap;

use super::BackendAddr;

/// Slots for weighted clusters: `weight` slots per cluster, over its endpoints in turn, each with
/// the index of its cluster in `weights`. A cluster without endpoints (or whose endpoints have no
/// backend id) keeps its share as `None` slots, which the kernel refuses: Envoy's TCP proxy fails
/// the connections it sends to a missing or empty cluster rather than moving them to the others.
/// Slot `n` (1-based, as in the maps) is element `n - 1`.
pub fn slots<'a>(
    weights: &'a [(Vec<BackendAddr>, u32)],
    ids: &BTreeMap<BackendAddr, u32>,
) -> Vec<(usize, Option<&'a BackendAddr>)> {
    let mut slots = Vec::new();
    for (index, (endpoints, weight)) in weights.iter().enumerate() {
        let usable: Vec<&BackendAddr> = endpoints.iter().filter(|b| ids.contains_key(*b)).collect();
        slots.extend((0..*weight as usize).map(|i| {
            let backend = (!usable.is_empty()).then(|| usable[i % usable.len()]);
            (index, backend)
        }));
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshpath_model::Protocol;
    use std::net::Ipv4Addr;

    fn be(last: u8) -> BackendAddr {
        BackendAddr {
            ip: Ipv4Addr::new(10, 0, 0, last),
            port: 8080,
            protocol: Protocol::Tcp,
        }
    }

    #[test]
    fn an_empty_cluster_keeps_its_share_as_refused_slots() {
        let ids = BTreeMap::from([(be(1), 1), (be(2), 2)]);
        // v1 has two endpoints, v2 none (a subset not defined yet), v3 one without an id.
        let weights = vec![(vec![be(1), be(2)], 3), (vec![], 2), (vec![be(3)], 1)];
        let slots = slots(&weights, &ids);
        let got: Vec<(usize, Option<u8>)> = slots
            .iter()
            .map(|(i, b)| (*i, b.map(|b| b.ip.octets()[3])))
            .collect();
        assert_eq!(
            got,
            [
                (0, Some(1)),
                (0, Some(2)),
                (0, Some(1)),
                (1, None),
                (1, None),
                (2, None)
            ]
        );
    }
}
