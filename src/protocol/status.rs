//! Status codes: one flat, stable, numbered list shared by the wire protocol, the client
//! library and the CLI. Domain outcomes (`sold_out`, `expired`, ...) are data, not errors.
//!
//! Numbers never change once released; new codes are appended. Codes 1..=19 are frame-level
//! (the header was unusable or the server could not take the frame; `internal_error` is the
//! exception and only appears in results); codes from 20 on are per-operation outcomes.

use std::fmt;

/// The outcome of a frame or of one operation inside a frame.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    /// The operation succeeded (for an idempotent repeat the result carries the REPEAT flag).
    Ok = 0,

    // Frame-level: the connection is closed after these, except `Busy`.
    /// The first four bytes of the frame were not `SCAP`.
    BadMagic = 1,
    /// The header's version byte is not one this server speaks.
    UnsupportedVersion = 2,
    /// The frame (header included) exceeds `frame_size_max_bytes`.
    FrameTooLarge = 3,
    /// The opcode is not defined.
    UnknownOpcode = 4,
    /// The body does not have the size or the content the opcode requires.
    MalformedBody = 5,
    /// `op_count` exceeds `batch_operations_max`.
    TooManyOperations = 6,
    /// The server is overloaded; retry after `retry_after_ms`. As a frame status (too many
    /// frames in flight) the connection stays open; in an error frame (too many
    /// connections) it is closed. As an operation status: too many forwarded or parked
    /// operations on the core.
    Busy = 7,
    /// The server could not serve the request because of an internal failure (appears in
    /// operation and control results, never as a frame status).
    InternalError = 8,
    /// Reserved header bits or fields were not zero.
    ReservedNotZero = 9,

    // Per-operation outcomes.
    /// No pool has this id or name.
    PoolNotFound = 20,
    /// The pool is deactivated: new reserves are refused (confirms still work).
    PoolInactive = 21,
    /// The pool as a whole cannot satisfy the requested quantity.
    SoldOut = 22,
    /// The quantity is zero or above 536,870,911 (2^29 - 1).
    InvalidQuantity = 23,
    /// The TTL is zero where one is required, or above the pool's maximum.
    InvalidTtl = 24,
    /// No reservation has this id (never created, refused, or purged after retention).
    NotFound = 25,
    /// The hold expired before the operation reached it.
    Expired = 26,
    /// The reservation is confirmed; it can no longer be released or extended.
    AlreadyConfirmed = 27,
    /// The reservation was released; it can no longer be confirmed or extended.
    AlreadyReleased = 28,
    /// The id is in use by a reservation on another pool.
    IdExistsWithDifferentPool = 29,
    /// The id is in use by a reservation of another user.
    IdExistsWithDifferentUser = 30,
    /// The id is in use by a reservation of another quantity.
    IdExistsWithDifferentQuantity = 31,
    /// The reservation was confirmed with another commit reference.
    ConfirmedWithDifferentRef = 32,
    /// The user id is zero (reserved). A reservation named with another user than its own
    /// answers `not_found`.
    InvalidUser = 33,
    /// The core's reservation table is full (`holds_max_per_core`).
    HoldsLimitReached = 34,
    /// A pool with this name already exists with other parameters.
    PoolExists = 35,
    /// The pool name is empty, too long, or not printable ASCII without spaces.
    InvalidPoolName = 36,
    /// The capacity is zero or above the maximum.
    InvalidCapacity = 37,
    /// The operation does not apply to this kind of pool (counted or seated).
    WrongPoolKind = 38,
    /// A lookup without a user found the id on more than one core; repeat it with the user.
    IdAmbiguous = 39,
    /// The feature is defined by the protocol but not available in this server.
    Unsupported = 40,
    /// The server holds `pools_max` pools already.
    PoolsLimitReached = 41,
    /// The reservation id is zero (reserved).
    InvalidId = 42,
    /// Rule `opens_at`: the pool's sale window has not opened yet (the result's
    /// `expires_at_ms` says when it opens).
    NotOpen = 43,
    /// Rule `closes_at`: the pool's sale window has closed.
    Closed = 44,
    /// Rule `max_qty`: the quantity is above the pool's maximum per request.
    QuantityAboveMax = 45,
    /// Rule `max_per_user`: the user's held, confirmed and pending units in the pool plus
    /// this quantity would exceed the pool's maximum per user.
    UserLimitReached = 46,
    /// Rule `rate`: the user has no reserve attempt left in the pool's token bucket; the
    /// result's `expires_at_ms` says when the next one comes.
    RateLimited = 47,
    /// The pool's rules are inconsistent (a window that closes at or before it opens, a
    /// rate without a burst or a burst without a rate, a maximum quantity above 2^29 - 1, a
    /// kept share above 1000‰ or a priority without one, unknown flags), or a change would
    /// alter a pool's kept share, which is fixed at creation.
    InvalidRules = 48,
    /// A smaller capacity would take units that are held, confirmed, or on their way to a
    /// reserve: a pool's capacity never goes below what it has handed out.
    CapacityInUse = 49,
    /// A pool description is longer than 128 bytes or has control characters.
    InvalidDescription = 50,
    /// The operation changes a pool and the connection has not shown the admin token (an
    /// `auth` frame with `admin.token`); control operations are open without one only when
    /// the server has no token and listens on loopback (or `insecure_open_control`).
    Unauthorized = 51,
}

impl Status {
    /// Every status, in numeric order (for docs, tests and tables).
    pub const ALL: [Status; 42] = [
        Status::Ok,
        Status::BadMagic,
        Status::UnsupportedVersion,
        Status::FrameTooLarge,
        Status::UnknownOpcode,
        Status::MalformedBody,
        Status::TooManyOperations,
        Status::Busy,
        Status::InternalError,
        Status::ReservedNotZero,
        Status::PoolNotFound,
        Status::PoolInactive,
        Status::SoldOut,
        Status::InvalidQuantity,
        Status::InvalidTtl,
        Status::NotFound,
        Status::Expired,
        Status::AlreadyConfirmed,
        Status::AlreadyReleased,
        Status::IdExistsWithDifferentPool,
        Status::IdExistsWithDifferentUser,
        Status::IdExistsWithDifferentQuantity,
        Status::ConfirmedWithDifferentRef,
        Status::InvalidUser,
        Status::HoldsLimitReached,
        Status::PoolExists,
        Status::InvalidPoolName,
        Status::InvalidCapacity,
        Status::WrongPoolKind,
        Status::IdAmbiguous,
        Status::Unsupported,
        Status::PoolsLimitReached,
        Status::InvalidId,
        Status::NotOpen,
        Status::Closed,
        Status::QuantityAboveMax,
        Status::UserLimitReached,
        Status::RateLimited,
        Status::InvalidRules,
        Status::CapacityInUse,
        Status::InvalidDescription,
        Status::Unauthorized,
    ];

    /// Decodes a status byte; `None` for a number this version does not define.
    pub fn from_u8(code: u8) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as u8 == code)
    }

    /// The snake_case name used in docs, JSON output and CLI messages.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::BadMagic => "bad_magic",
            Status::UnsupportedVersion => "unsupported_version",
            Status::FrameTooLarge => "frame_too_large",
            Status::UnknownOpcode => "unknown_opcode",
            Status::MalformedBody => "malformed_body",
            Status::TooManyOperations => "too_many_operations",
            Status::Busy => "busy",
            Status::InternalError => "internal_error",
            Status::ReservedNotZero => "reserved_not_zero",
            Status::PoolNotFound => "pool_not_found",
            Status::PoolInactive => "pool_inactive",
            Status::SoldOut => "sold_out",
            Status::InvalidQuantity => "invalid_quantity",
            Status::InvalidTtl => "invalid_ttl",
            Status::NotFound => "not_found",
            Status::Expired => "expired",
            Status::AlreadyConfirmed => "already_confirmed",
            Status::AlreadyReleased => "already_released",
            Status::IdExistsWithDifferentPool => "id_exists_with_different_pool",
            Status::IdExistsWithDifferentUser => "id_exists_with_different_user",
            Status::IdExistsWithDifferentQuantity => "id_exists_with_different_quantity",
            Status::ConfirmedWithDifferentRef => "confirmed_with_different_ref",
            Status::InvalidUser => "invalid_user",
            Status::HoldsLimitReached => "holds_limit_reached",
            Status::PoolExists => "pool_exists",
            Status::InvalidPoolName => "invalid_pool_name",
            Status::InvalidCapacity => "invalid_capacity",
            Status::WrongPoolKind => "wrong_pool_kind",
            Status::IdAmbiguous => "id_ambiguous",
            Status::Unsupported => "unsupported",
            Status::PoolsLimitReached => "pools_limit_reached",
            Status::InvalidId => "invalid_id",
            Status::NotOpen => "not_open",
            Status::Closed => "closed",
            Status::QuantityAboveMax => "quantity_above_max",
            Status::UserLimitReached => "user_limit_reached",
            Status::RateLimited => "rate_limited",
            Status::InvalidRules => "invalid_rules",
            Status::CapacityInUse => "capacity_in_use",
            Status::InvalidDescription => "invalid_description",
            Status::Unauthorized => "unauthorized",
        }
    }

    /// True for the frame-level codes after which the server closes the connection.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Status::BadMagic
                | Status::UnsupportedVersion
                | Status::FrameTooLarge
                | Status::UnknownOpcode
                | Status::MalformedBody
                | Status::TooManyOperations
                | Status::ReservedNotZero
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for s in Status::ALL {
            assert_eq!(Status::from_u8(s as u8), Some(s));
            assert!(names.insert(s.name()), "duplicate name {}", s.name());
        }
        assert_eq!(Status::from_u8(19), None);
        assert_eq!(Status::from_u8(255), None);
    }
}
