//! The `mcsync` command: demo, serve, subscribe, relay, status, users, bench.

mod bench;
mod demo;
mod metrics_http;
mod relay;
mod serve;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// mcsync: one-to-many database replication over encrypted IP multicast.
#[derive(Parser)]
#[command(name = "mcsync", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a publisher and several subscribers in this process on loopback multicast,
    /// publish a mixed workload with injected loss, and show that every replica converges.
    Demo(demo::DemoArgs),
    /// Publish: open a publisher store, serve repair requests, and publish lines read from
    /// standard input (`put KEY VALUE` / `del KEY`) into a database.
    Serve(serve::ServeArgs),
    /// Subscribe to a database and print every update as it is applied.
    Subscribe(serve::SubscribeArgs),
    /// Relay: subscribe to databases of an upstream publisher and re-publish them to
    /// another multicast group and interface, with the relay's own journal, control server,
    /// TLS identity, users file and keys. Runs until SIGINT or SIGTERM.
    Relay(relay::RelayArgs),
    /// Print the databases, versions and record counts held in a data directory.
    Status(serve::StatusArgs),
    /// Compare a subscriber's replica with the publisher's state by range digests; print
    /// whether they agree and, if not, which key-hash ranges differ (exit code 1).
    Verify(serve::CheckArgs),
    /// Repair a subscriber's replica by hash resync (only what differs is sent).
    Resync(serve::CheckArgs),
    /// Manage the users file the publisher authenticates subscribers with.
    #[command(subcommand)]
    Users(serve::UsersCommand),
    /// Measure throughput, latency, egress bytes and repair cost on loopback multicast in
    /// this process, beside raw UDP multicast and TCP fan-out baselines; print a table and
    /// write bench.json and PNG plots.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(a) => demo::run(a),
        Command::Serve(a) => serve::serve(a),
        Command::Subscribe(a) => serve::subscribe(a),
        Command::Relay(a) => relay::relay(a),
        Command::Status(a) => serve::status(a),
        Command::Users(c) => serve::users(c),
        Command::Verify(a) => serve::verify(a),
        Command::Resync(a) => serve::resync(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mcsync: {e}");
            ExitCode::from(2)
        }
    }
}
