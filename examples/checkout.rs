//! A ticket checkout: reserve → pay → confirm, and why retrying is always safe.
//!
//! How it works: the reservation id is chosen by the client before the first attempt, and
//! every retry sends the very same operation. The server decides each id once: a repeat
//! answers the first outcome with `repeat: true` and changes nothing. So when a connection
//! drops and the answer is lost, the application just sends the operation again, on a new
//! connection, without knowing whether the first one arrived. (`AsyncClient` does this by
//! itself after a timeout or a lost connection; this example does it by hand to show it.)
//! Confirms work the same way: a second confirm with the same payment reference is a
//! repeat, and one with another reference is refused.
//!
//! ```text
//! shardcap serve &                                # the server on 127.0.0.1:7400, pool "demo"
//! cargo run --example checkout -- [--server 127.0.0.1:7400] [--pool demo]
//! ```

use std::error::Error;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use shardcap::client::Client;
use shardcap::client::tokio::AsyncClient;
use shardcap::protocol::control::{PoolRef, PoolStatus};
use shardcap::protocol::{ConfirmOp, ReservationState, ReserveOp, Status, user_id_from_name};

type BoxError = Box<dyn Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (server, pool_name) = parse_args().unwrap_or_else(|usage| {
        eprintln!("{usage}");
        std::process::exit(2)
    });

    let first = AsyncClient::connect(server.as_str()).await?;
    let pool = first.pool_id(&pool_name).await?;
    let before = pool_status(&server, pool).await?;
    println!("pool {pool_name:?}: held {}, confirmed {}", before.held(), before.confirmed());

    // The checkout picks its reservation id once, before the first attempt.
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let reserve = ReserveOp {
        id: now_ns,
        user: user_id_from_name("alice"),
        pool,
        qty: 2, // two tickets
        ttl_ms: 0,
        priority: 0,
    };

    // 1. Reserve. The server holds the tickets, and the answer is lost on its way back. Here
    //    the loss is simulated: the answer is ignored and the connection dropped, so as far
    //    as the application knows, the reserve may never have arrived.
    let _lost_answer = first.reserve(reserve).await;
    drop(first);
    let after_first = pool_status(&server, pool).await?;
    println!("reserve sent; its answer was lost. held now {}", after_first.held());

    // 2. Retry on a new connection with the very same operation (same id).
    let second = AsyncClient::connect(server.as_str()).await?;
    let held = second.reserve(reserve).await?;
    println!("retry: state {:?}, repeat: {}, expires at {} ms", held.state, held.repeat, held.expires_at_ms);
    assert!(held.repeat, "the server recognised the retry");
    let after_retry = pool_status(&server, pool).await?;
    println!(
        "held before {}, after the reserve {}, after the retry {}: the retry held nothing more",
        before.held(),
        after_first.held(),
        after_retry.held()
    );
    assert_eq!(
        after_retry.held(),
        after_first.held(),
        "the retry must not hold twice (unless another client used the pool meanwhile)"
    );

    // 3. Pay (simulated): the payment service answers a reference for the charge.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let payment_ref: u128 = now_ns + 1; // any 128-bit reference: a charge id, an order id
    println!("paid: payment reference {payment_ref:032x}");

    // 4. Confirm with the payment reference, then confirm again: the second is a repeat.
    let confirm = ConfirmOp { id: reserve.id, user: reserve.user, commit_ref: payment_ref };
    let confirmed = second.confirm(confirm).await?;
    println!("confirm: state {:?}, repeat: {}", confirmed.state, confirmed.repeat);
    assert_eq!(confirmed.state, ReservationState::Confirmed);
    let again = second.confirm(confirm).await?;
    println!("confirm again: state {:?}, repeat: {}", again.state, again.repeat);
    assert!(again.repeat, "a confirm with the same reference is a repeat");

    // A confirm with another payment reference is refused: the tickets are paid for once.
    let other = second.confirm(ConfirmOp { commit_ref: payment_ref + 1, ..confirm }).await;
    println!("confirm with another reference: {}", other.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into()));
    assert_eq!(other.err().and_then(|e| e.status()), Some(Status::ConfirmedWithDifferentRef));

    let after = pool_status(&server, pool).await?;
    println!(
        "pool {pool_name:?}: held {}, confirmed {} (+{} tickets sold once)",
        after.held(),
        after.confirmed(),
        after.confirmed() - before.confirmed()
    );
    Ok(())
}

/// `--server ADDR` (default 127.0.0.1:7400) and `--pool NAME` (default "demo").
fn parse_args() -> Result<(String, String), String> {
    let (mut server, mut pool) = ("127.0.0.1:7400".to_string(), "demo".to_string());
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--server" => server = value,
            "--pool" => pool = value,
            _ => return Err(format!("unknown argument {flag}\nusage: checkout [--server ADDR] [--pool NAME]")),
        }
    }
    Ok((server, pool))
}

/// The pool's status, in total and per core, read with the blocking client on a connection
/// of its own.
async fn pool_status(server: &str, pool: u32) -> Result<PoolStatus, BoxError> {
    let server = server.to_string();
    tokio::task::spawn_blocking(move || {
        let mut admin = Client::connect(server.as_str())?;
        let status = admin.pool_status(&PoolRef { id: pool, name: String::new() })?;
        Ok(status.map_err(|status| format!("pool status: {status}"))?)
    })
    .await?
}
