//! Live pool changes end to end, against the real server binary on 2 cores: a capacity
//! that grows is there at once on every core; one that shrinks takes free units from the
//! shards where they are and never goes below what is held and confirmed; a pool renamed
//! is known by its new name only; and all of it survives a SIGKILL and a restart.
//!
//! Every server runs on loopback and was started by the test.

#![cfg(feature = "server")]

mod common;

use std::time::Duration;

use common::{Server, by_id, pool, users_on};
use shardcap::client::Client;
use shardcap::protocol::control::{PoolRef, PoolStatus};
use shardcap::protocol::{ConfirmOp, ReleaseOp, Status};

const READ_TIMEOUT: Duration = Duration::from_secs(30);

fn client(mut c: Client) -> Client {
    c.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    c
}

fn status(c: &mut Client, pool: u32) -> PoolStatus {
    let status = c.pool_status(&by_id(pool)).unwrap().expect("the pool exists");
    assert!(status.conserved(), "capacity conserved: {status:?}");
    status
}

/// Reserves `qty` units for `user` with id `id` and returns the status.
fn reserve(c: &mut Client, id: u128, user: u128, pool: u32, qty: u32) -> Status {
    Status::from_u8(c.reserve(&[common::reserve(id, user, pool, qty, 0)]).unwrap()[0].status).unwrap()
}

#[test]
fn a_capacity_that_grows_is_there_at_once_on_every_core() {
    let server = Server::start(2, &pool("grow", 10));
    let mut admin = client(server.client());
    let id = admin.pool_id("grow").unwrap().unwrap();
    let (u0, u1) = (users_on(0, 2, 1)[0], users_on(1, 2, 1)[0]);
    let mut c0 = client(server.core_client(0));
    let mut c1 = client(server.core_client(1));
    assert_eq!(reserve(&mut c0, 1, u0, id, 6), Status::Ok);
    assert_eq!(reserve(&mut c1, 2, u1, id, 4), Status::Ok);
    assert_eq!(reserve(&mut c0, 3, u0, id, 1), Status::SoldOut);
    assert_eq!(reserve(&mut c1, 4, u1, id, 1), Status::SoldOut);

    let info = admin.pool_set_capacity(id, 13).unwrap().expect("a larger capacity is accepted");
    assert_eq!(info.capacity, 13);
    // The next reserve on either core sees the new units.
    assert_eq!(reserve(&mut c1, 5, u1, id, 2), Status::Ok);
    assert_eq!(reserve(&mut c0, 6, u0, id, 1), Status::Ok);
    assert_eq!(reserve(&mut c0, 7, u0, id, 1), Status::SoldOut);
    let s = status(&mut admin, id);
    assert_eq!((s.info.capacity, s.held(), s.available()), (13, 13, 0));
    for core in 0..2 {
        let listed = client(server.core_client(core)).pool_list().unwrap();
        assert_eq!(listed.iter().map(|p| p.capacity).collect::<Vec<_>>(), [13], "core {core}'s catalog");
    }
}

#[test]
fn a_capacity_that_shrinks_takes_free_units_from_every_shard_but_never_what_is_handed_out() {
    let server = Server::start(2, &pool("shrink", 100));
    let mut admin = client(server.client());
    let id = admin.pool_id("shrink").unwrap().unwrap();
    let info = status(&mut admin, id).info;
    let other = 1 - info.home_core;
    // 30 units held and confirmed by users of the core that is not the pool's home: its
    // shard keeps 20 free units the home core does not have.
    let users = users_on(other, 2, 3);
    let mut c = client(server.core_client(other));
    for (n, &u) in users.iter().enumerate() {
        assert_eq!(reserve(&mut c, n as u128 + 1, u, id, 10), Status::Ok);
    }
    let confirmed = c.confirm(&[ConfirmOp { id: 1, user: users[0], commit_ref: 1 }]).unwrap();
    assert_eq!(confirmed[0].status, Status::Ok as u8);

    // Below held + confirmed: refused, nothing changes.
    assert_eq!(admin.pool_set_capacity(id, 29).unwrap(), Err(Status::CapacityInUse));
    assert_eq!(admin.pool_set_capacity(id, 0).unwrap(), Err(Status::InvalidCapacity));
    assert_eq!(admin.pool_set_capacity(99, 10).unwrap(), Err(Status::PoolNotFound));
    let s = status(&mut admin, id);
    assert_eq!((s.info.capacity, s.held() + s.confirmed(), s.available()), (100, 30, 70));

    // 60 units less: more than the home core's 50, so the other shard's free units go too.
    let info = admin.pool_set_capacity(id, 40).unwrap().expect("shrink to 40");
    assert_eq!(info.capacity, 40);
    let s = status(&mut admin, id);
    assert_eq!((s.info.capacity, s.held(), s.confirmed(), s.available()), (40, 20, 10, 10));
    // Exactly what is left can be taken, from either core, and no more.
    let u = users_on(info.home_core, 2, 1)[0];
    let mut home = client(server.core_client(info.home_core));
    assert_eq!(reserve(&mut home, 10, u, id, 11), Status::SoldOut);
    assert_eq!(reserve(&mut c, 11, users[1], id, 4), Status::Ok);
    assert_eq!(reserve(&mut home, 12, u, id, 6), Status::Ok);
    assert_eq!(reserve(&mut home, 13, u, id, 1), Status::SoldOut);
    // 10 units free again, on both cores (4 released on the other core, 6 at home); down
    // to exactly what is held and confirmed, which takes both shards' free units.
    assert_eq!(c.release(&[ReleaseOp { id: 11, user: users[1] }]).unwrap()[0].status, Status::Ok as u8);
    assert_eq!(home.release(&[ReleaseOp { id: 12, user: u }]).unwrap()[0].status, Status::Ok as u8);
    let s = status(&mut admin, id);
    assert_eq!((s.held() + s.confirmed(), s.available()), (30, 10));
    assert_eq!(admin.pool_set_capacity(id, 30).unwrap().map(|i| i.capacity), Ok(30));
    let s = status(&mut admin, id);
    assert_eq!((s.info.capacity, s.held() + s.confirmed(), s.available()), (30, 30, 0));
    assert_eq!(admin.pool_set_capacity(id, 29).unwrap(), Err(Status::CapacityInUse));
}

#[test]
fn a_renamed_pool_is_known_by_its_new_name_only_on_every_core() {
    let server = Server::start(2, &format!("{}{}", pool("first", 5), pool("second", 5)));
    let mut admin = client(server.client());
    let first = admin.pool_id("first").unwrap().unwrap();
    assert_eq!(admin.pool_rename(first, "second").unwrap(), Err(Status::PoolExists));
    assert_eq!(admin.pool_rename(first, "has space").unwrap(), Err(Status::InvalidPoolName));
    assert_eq!(admin.pool_rename(first, "").unwrap(), Err(Status::InvalidPoolName));
    assert_eq!(admin.pool_rename(77, "x").unwrap(), Err(Status::PoolNotFound));
    let info = admin.pool_rename(first, "renamed").unwrap().expect("rename");
    assert_eq!((info.id, info.name.as_str()), (first, "renamed"));
    // Its own name again changes nothing.
    assert_eq!(admin.pool_rename(first, "renamed").unwrap().map(|i| i.name), Ok("renamed".into()));
    for core in 0..2 {
        let mut c = client(server.core_client(core));
        assert_eq!(c.pool_id("renamed").unwrap(), Some(first), "core {core}");
        assert_eq!(c.pool_id("first").unwrap(), None, "core {core}");
        let by_name = c.pool_status(&PoolRef { id: 0, name: "renamed".into() }).unwrap().expect("by its new name");
        assert_eq!(by_name.info.id, first);
    }
    // The old name is free again.
    let second = admin.pool_id("second").unwrap().unwrap();
    assert_eq!(admin.pool_rename(second, "first").unwrap().map(|i| i.name), Ok("first".into()));
}

#[test]
fn a_description_is_set_checked_cleared_and_shown_by_every_core() {
    let server = Server::start(2, &pool("described", 5));
    let mut admin = client(server.client());
    let id = admin.pool_id("described").unwrap().unwrap();
    assert_eq!(status(&mut admin, id).info.description, "", "none at creation");
    let text = "Friday 20:00, hall B — rows 1–40";
    assert_eq!(admin.pool_set_description(id, text).unwrap().map(|i| i.description), Ok(text.into()));
    assert_eq!(admin.pool_set_description(id, &"x".repeat(129)).unwrap(), Err(Status::InvalidDescription));
    assert_eq!(admin.pool_set_description(id, &"x".repeat(255)).unwrap(), Err(Status::InvalidDescription));
    assert_eq!(admin.pool_set_description(id, "two\nlines").unwrap(), Err(Status::InvalidDescription));
    assert_eq!(admin.pool_set_description(9, "x").unwrap(), Err(Status::PoolNotFound));
    for core in 0..2 {
        let mut c = client(server.core_client(core));
        assert_eq!(c.pool_list().unwrap()[0].description, text, "core {core}'s list");
        assert_eq!(status(&mut c, id).info.description, text, "core {core}'s status");
    }
    assert_eq!(admin.pool_set_description(id, &"é".repeat(64)).unwrap().map(|i| i.description.len()), Ok(128));
    assert_eq!(admin.pool_set_description(id, "").unwrap().map(|i| i.description), Ok(String::new()));
    assert_eq!(admin.pool_set_description(id, text).unwrap().map(|i| i.description), Ok(text.into()));
    drop(admin);

    // Every change, the refused ones included, left a log that reads back.
    let server = Server::start_in(2, &pool("described", 5), &server.kill());
    assert_eq!(status(&mut client(server.client()), id).info.description, text);
}

#[test]
fn capacity_changes_and_renames_survive_a_kill_and_the_configured_capacity_does_not_override_them() {
    let config = pool("kept", 50);
    let server = Server::start(2, &config);
    let mut admin = client(server.client());
    let id = admin.pool_id("kept").unwrap().unwrap();
    let home = status(&mut admin, id).info.home_core;
    let u = users_on(1 - home, 2, 1)[0];
    let mut c = client(server.core_client(1 - home));
    assert_eq!(reserve(&mut c, 1, u, id, 5), Status::Ok);
    assert_eq!(admin.pool_set_capacity(id, 80).unwrap().map(|i| i.capacity), Ok(80));
    assert_eq!(admin.pool_set_capacity(id, 20).unwrap().map(|i| i.capacity), Ok(20));
    assert_eq!(admin.pool_rename(id, "kept-2").unwrap().map(|i| i.name), Ok("kept-2".into()));
    assert_eq!(admin.pool_set_description(id, "resized twice").unwrap().map(|i| i.capacity), Ok(20));
    drop((admin, c));
    let dir = server.kill();

    // The configuration still says `kept` with 50 units: the stored pool is renamed, so
    // `kept` is created anew; `kept-2` keeps its 20 units.
    let server = Server::start_in(2, &config, &dir);
    let mut admin = client(server.client());
    let s = status(&mut admin, id);
    assert_eq!((s.info.name.as_str(), s.info.capacity, s.held(), s.available()), ("kept-2", 20, 5, 15));
    assert_eq!(s.info.description, "resized twice");
    let kept = admin.pool_id("kept").unwrap().expect("the configured pool exists again");
    assert_ne!(kept, id);
    assert_eq!(status(&mut admin, kept).info.capacity, 50);
    drop(admin);
    let dir = server.kill();

    // A configuration whose capacity differs from the stored one starts, and the stored one
    // (changed live) stands.
    let server = Server::start_in(2, &format!("{}{}", pool("kept-2", 999), pool("kept", 50)), &dir);
    let mut admin = client(server.client());
    assert_eq!(status(&mut admin, id).info.capacity, 20);
    let mut c = client(server.core_client(home));
    assert_eq!(reserve(&mut c, 2, users_on(home, 2, 1)[0], id, 15), Status::Ok);
    assert_eq!(reserve(&mut c, 3, users_on(home, 2, 1)[0], id, 1), Status::SoldOut);
}

#[test]
fn a_capacity_change_that_core_0_lost_in_a_crash_is_taken_from_the_home_core() {
    use shardcap::shard::Command;
    use shardcap::wal::{core_dir, record, recovery, segment};
    let config = pool("torn", 40);
    let server = Server::start(2, &config);
    let mut admin = client(server.client());
    let id = admin.pool_id("torn").unwrap().unwrap();
    assert_eq!(status(&mut admin, id).info.home_core, 1, "pool 1's home on 2 cores");
    assert_eq!(admin.pool_set_capacity(id, 60).unwrap().map(|i| i.capacity), Ok(60));
    drop(admin);
    let dir = server.kill();

    // Core 0 recorded the change last (after core 1 decided it): cut into that record as a
    // crash in the middle of its write would.
    let files = recovery::list(&core_dir(&dir, 0)).unwrap();
    let (_, newest) = files.segments.last().expect("core 0 has a log");
    let bytes = std::fs::read(newest).unwrap();
    let (mut pos, mut last) = (segment::SEGMENT_HEADER_SIZE, None);
    while let Ok((rec, size)) = record::decode(&bytes[pos..]) {
        last = Some((pos + size, rec.command));
        pos += size;
    }
    let (end, command) = last.expect("records");
    assert_eq!(command, Command::ResizePool { pool: id, capacity: 60 }, "core 0's last record");
    std::fs::OpenOptions::new().write(true).open(newest).unwrap().set_len(end as u64 - 5).unwrap();

    let server = Server::start_in(2, &config, &dir);
    for core in 0..2 {
        let listed = client(server.core_client(core)).pool_list().unwrap();
        assert_eq!(listed.iter().map(|p| p.capacity).collect::<Vec<_>>(), [60], "core {core}'s catalog");
    }
    let mut admin = client(server.client());
    let s = status(&mut admin, id);
    assert_eq!((s.info.capacity, s.available()), (60, 60));
}
