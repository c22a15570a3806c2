//! `shardcap`: args → config → start. The server runs on the embedded default config when
//! given no flags; `wal` reads a data directory offline; `top` reads the admin port's
//! metrics; every other subcommand is a client of the binary protocol.

use std::io::Write;

use clap::Parser;
use shardcap::cli::{Cli, Command, run_client, serve_config};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            if let Err(e) = serve(&args) {
                eprintln!("error: {e:#}");
                std::process::exit(2);
            }
        }
        command => {
            if let Err(failure) = run_client(command) {
                if !failure.message.is_empty() {
                    eprintln!("error: {}", failure.message);
                }
                std::process::exit(failure.code);
            }
        }
    }
}

fn serve(args: &shardcap::cli::ServeArgs) -> anyhow::Result<()> {
    // A panic on any core (a broken invariant is an assert) stops the whole server: a
    // server with a dead core would leave every request routed there unanswered.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
    let config = serve_config(args)?;
    // glommio's only message from `glommio::reactor` reports the failed polled-ring probe
    // that the write-only log segments cause on purpose (`wal::writer::open_segment`); it is
    // shown only if SHARDCAP_LOG asks for it.
    let filter = EnvFilter::try_from_env("SHARDCAP_LOG").unwrap_or_else(|_| {
        EnvFilter::new(&config.server.log_level)
            .add_directive("glommio::reactor=off".parse().expect("a valid directive"))
    });
    // Colours only on a terminal: a log file or a pipe gets plain `key=value` text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    let pools: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    tracing::info!(
        listen = %config.server.listen,
        cores = config.core_count(),
        pinned = config.server.pin_cores,
        durability = config.durability.mode.name(),
        data_dir = %config.server.data_dir.display(),
        holds_max_per_core = config.limits.holds_max_per_core,
        pools = ?pools,
        admin = %config.admin.listen,
        admin_token = if config.admin.token.is_empty() { "none (admin port changes refused)" } else { "set" },
        // Who may change pools on the data ports (the token itself is never logged).
        data_control = if !config.admin.token.is_empty() {
            "admin token"
        } else if config.data_listen_loopback() {
            "open (loopback)"
        } else {
            "open to anyone (insecure_open_control)"
        },
        "starting"
    );
    shardcap::runtime::run(config, |ready| {
        let ports: Vec<String> = ready.core_ports.iter().map(u16::to_string).collect();
        let admin = ready.admin.map_or_else(|| "off".to_string(), |a| a.to_string());
        tracing::info!(listen = %ready.listen, cores = ready.cores, core_ports = ?ready.core_ports, %admin, "ready");
        // One line on stdout that scripts and tests can wait for.
        println!(
            "shardcap ready: listen={} cores={} core_ports={} admin={admin}",
            ready.listen,
            ready.cores,
            ports.join(",")
        );
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
