//! The JSON shapes of pools, pool status, reservations and user activity: one definition
//! for the admin HTTP API and for the command line's `--json` output.

use serde_json::{Value, json};

use crate::protocol::control::{
    PoolInfo, PoolKind, PoolRules, PoolStatus, SHARD_FLAG_DRAINED, SHARD_FLAG_HOME, UserActivity,
};
use crate::protocol::{LookupResult, ReservationState, Status, format_id};

/// A pool's rules.
pub fn rules_json(r: &PoolRules) -> Value {
    json!({
        "max_per_user": r.max_per_user, "max_qty": r.max_qty, "rate_per_s": r.rate_per_s, "burst": r.burst,
        "opens_at_ms": r.opens_at_ms, "closes_at_ms": r.closes_at_ms, "track_users": r.tracks_users(),
        "kept_permille": r.kept_permille, "priority_min": r.priority_min,
    })
}

/// A pool's definition.
pub fn pool_json(info: &PoolInfo) -> Value {
    json!({
        "id": info.id, "name": info.name, "kind": PoolKind::from_u8(info.kind).map_or("unknown", |k| k.name()),
        "active": info.active, "capacity": info.capacity, "hold_ttl_ms_default": info.hold_ttl_ms_default,
        "hold_ttl_ms_max": info.hold_ttl_ms_max, "home_core": info.home_core, "rules": rules_json(&info.rules),
        "description": info.description,
    })
}

/// A pool's status: its definition, its totals and one entry per shard (core).
pub fn pool_status_json(status: &PoolStatus) -> Value {
    let shards: Vec<Value> = status
        .shards
        .iter()
        .map(|s| {
            json!({"core": s.core, "capacity": s.capacity, "held": s.held, "confirmed": s.confirmed,
                   "available": s.available(), "parked": s.parked, "lent": s.lent, "borrowed": s.borrowed,
                   "home": s.flags & SHARD_FLAG_HOME != 0, "drained": s.flags & SHARD_FLAG_DRAINED != 0})
        })
        .collect();
    json!({"pool": pool_json(&status.info), "held": status.held(), "confirmed": status.confirmed(),
           "available": status.available(), "in_flight": status.in_flight() as i64, "shards": shards})
}

/// A reservation, as a lookup of id `id` found it.
pub fn lookup_json(id: u128, r: &LookupResult) -> Value {
    let status = Status::from_u8(r.status).unwrap_or(Status::InternalError);
    json!({
        "status": status.name(), "id": format_id(id), "state": state_name(r.state), "pool": r.pool,
        "qty": r.qty, "user": format_id(r.user), "expires_at_ms": r.expires_at_ms,
        "commit_ref": format_id(r.commit_ref),
    })
}

/// A user's activity in one pool; `user` is how the caller named the user, `pool` the
/// pool's name.
pub fn activity_json(user: &str, pool: &str, a: &UserActivity) -> Value {
    json!({"user": user, "pool": pool, "pool_id": a.pool, "held": a.held, "confirmed": a.confirmed,
           "pending": a.pending, "released": a.released, "expired": a.expired,
           "last_activity_ms": a.last_activity_ms, "attempts_left": a.attempts_left_milli as f64 / 1000.0,
           "recent": a.events.iter().map(|e| json!({"id": format_id(e.id), "at_ms": e.at_ms, "qty": e.qty,
               "state": state_name(e.state)})).collect::<Vec<_>>()})
}

/// The name of a reservation state byte.
pub fn state_name(state: u8) -> &'static str {
    ReservationState::from_u8(state).map_or("unknown", |s| s.name())
}
