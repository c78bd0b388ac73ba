//! `MP_LIVE`: how many entries two per-socket maps may hold, so the programs can skip looking a
//! socket up in them when they are empty, which is the common case: most sockets hold no
//! connection-limit slot (`MP_SOCK_LIMIT`, only for services with `maxConnections`) and almost
//! none carries a fallback mark (`MP_SOCK_FALLBK`). sock_release, sock_ops and sk_msg run for
//! every socket or message; a lookup that misses in a map of hundreds of thousands of buckets
//! still costs a cache (and TLB) miss.
//!
//! Each slot is an upper bound, never less than the live entries: the programs add 1 before
//! inserting an entry and take 1 off after deleting one; an LRU eviction takes nothing off. A
//! lookup is skipped only when the slot is 0.
//!
//! Entries an agent from before this map wrote carry no count: an agent that finds those maps
//! pinned but this one new sets the slot to [`LIVE_UNKNOWN`], so its programs always look up.

pub const MAP_LIVE: &str = "MP_LIVE";
/// Slots of `MP_LIVE` (u64 each).
pub const LIVE_SLOTS: u32 = 2;
/// `MP_LIVE[LIVE_TRACKED_SOCKS]`: entries of `MP_SOCK_LIMIT`, at most.
pub const LIVE_TRACKED_SOCKS: u32 = 0;
/// `MP_LIVE[LIVE_FALLBACK_MARKS]`: entries of `MP_SOCK_FALLBK`, at most.
pub const LIVE_FALLBACK_MARKS: u32 = 1;
/// A count that never reaches 0 by decrements: "entries of unknown number may exist".
pub const LIVE_UNKNOWN: u64 = 1 << 62;
