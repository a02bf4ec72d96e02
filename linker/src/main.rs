//! `mqlink`: the link agent's command line. See the crate docs of `mqlink`
//! (linker/src/lib.rs) for what each command does.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use mqlink::cli::{CertsAction, Cli, Command};
use mqlink_topology::RegionName;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check(args) => {
            mqlink::check::run(&args, &mut std::io::stdout().lock()).map_err(anyhow::Error::from)
        }
        Command::Certs { action } => certs(action).map(|()| true),
        Command::Bench(args) => bench(&args),
        Command::Ctl(args) => ctl(&args),
        Command::Run { config } => run(&config).map(|()| true),
        Command::Simulate {
            scenario,
            json,
            seed,
            out,
        } => simulate(&scenario, json, seed, out.as_deref()),
        Command::Demo {
            regions,
            duration,
            broker,
        } => demo(regions, &duration, broker),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mqlink: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `mqlink ctl`: ask a running agent; `--watch` refreshes until Ctrl-C.
fn ctl(args: &mqlink::cli::CtlArgs) -> anyhow::Result<bool> {
    use mqlink::admin::ctl;
    let cfg = match &args.config {
        Some(p) => Some(mqlink_config::load(p).map_err(|e| anyhow::anyhow!("{e}"))?),
        None => None,
    };
    let admin: std::net::SocketAddr = match (&args.admin, &cfg) {
        (Some(a), _) => a
            .parse()
            .or_else(|_| {
                std::net::ToSocketAddrs::to_socket_addrs(a.as_str())
                    .ok()
                    .and_then(|mut it| it.next())
                    .ok_or(())
            })
            .map_err(|()| anyhow::anyhow!("--admin {a}: expected HOST:PORT"))?,
        (None, Some(c)) => c.listen.admin,
        (None, None) => mqlink_config::region::DEFAULT_ADMIN
            .parse()
            .context("the default admin address")?,
    };
    // An agent listening on every address is asked on loopback.
    let admin = if admin.ip().is_unspecified() {
        std::net::SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), admin.port())
    } else {
        admin
    };
    // Mutual TLS when the address is not loopback, or the agent's
    // configured one is not (an agent on every address is asked on
    // loopback, still over TLS).
    let configured_tls = cfg
        .as_ref()
        .is_some_and(|c| mqlink::admin::needs_tls(&c.listen.admin));
    let tls = if mqlink::admin::needs_tls(&admin) || configured_tls {
        let Some(c) = &cfg else {
            anyhow::bail!(
                "{admin} is not a loopback address: its admin API takes mutual TLS only; \
                 give --config with a certificate from the deployment CA"
            );
        };
        Some(ctl::ClientTls {
            cert: c.tls.cert.clone(),
            key: c.tls.key.clone(),
            ca: c.tls.ca.clone(),
            name: args
                .tls_name
                .clone()
                .unwrap_or_else(|| c.region.to_string()),
        })
    } else {
        None
    };
    let target = ctl::Target {
        addr: admin.to_string(),
        tls,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    mqlink::run::install_crypto();
    rt.block_on(async {
        let mut client = ctl::connect(&target).await?;
        loop {
            let reply = ctl::fetch(&mut client, &args.view).await?;
            let text = if args.json {
                serde_json::to_string_pretty(&reply)? + "\n"
            } else {
                ctl::render(&reply)
            };
            if !args.watch {
                print!("{text}");
                return Ok(true);
            }
            // Clear the screen, home the cursor, then the view.
            print!("\x1b[2J\x1b[H{text}");
            tokio::select! {
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = tokio::signal::ctrl_c() => return Ok(true),
            }
        }
    })
}

fn certs(action: CertsAction) -> anyhow::Result<()> {
    match action {
        CertsAction::Init { out } => {
            let (cert, key) = mqlink::certs::init(&out)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertsAction::Issue { region, out, days } => {
            let region = RegionName::new(&region)?;
            let (cert, key) = mqlink::certs::issue_for(&region, &out, days)?;
            println!("wrote {} and {}", cert.display(), key.display());
        }
        CertsAction::Inspect { file, json } => {
            let certs = mqlink::certs::inspect(&file)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&certs)?);
            } else {
                let text: Vec<String> = certs.iter().map(ToString::to_string).collect();
                print!("{}", text.join("\n"));
            }
        }
    }
    Ok(())
}

fn simulate(
    path: &std::path::Path,
    json: bool,
    seed: Option<u64>,
    out: Option<&std::path::Path>,
) -> anyhow::Result<bool> {
    use std::io::IsTerminal as _;
    let scenario = match mqlink_sim::load(path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return Ok(false);
        }
    };
    let seed = seed.unwrap_or(scenario.seed);
    eprintln!(
        "simulating {} with seed {seed} (replay with --seed {seed})",
        path.display()
    );
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let report = mqlink_sim::simulate(scenario, Some(seed), |done| {
        if tty {
            eprint!(
                "\r  {:>5.1} % simulated, {:.1} s",
                done * 100.0,
                started.elapsed().as_secs_f64()
            );
        }
    });
    if tty {
        eprintln!();
    }
    eprintln!(
        "simulated in {:.2} s of wall time",
        started.elapsed().as_secs_f64()
    );
    let json_text = serde_json::to_string_pretty(&report)?;
    let text = report.text();
    if json {
        println!("{json_text}");
    } else {
        print!("{text}");
    }
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("report.json"), &json_text)?;
        std::fs::write(dir.join("report.txt"), &text)?;
        let charts = mqlink_sim::charts::write(&report, dir)?;
        let names: Vec<String> = charts.iter().map(|p| p.display().to_string()).collect();
        eprintln!(
            "wrote {}/report.json, report.txt and {}",
            dir.display(),
            names.join(", ")
        );
    }
    Ok(true)
}

fn duration_arg(flag: &str, v: &str) -> anyhow::Result<std::time::Duration> {
    mqlink_config::units::parse_duration(v).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

fn bench(args: &mqlink::cli::BenchArgs) -> anyhow::Result<bool> {
    use mqlink::bench::{Workload, compare, run};
    if !(args.wanted > 0.0 && args.wanted <= 1.0) {
        anyhow::bail!(
            "--wanted: a share above 0 and at most 1, not {}",
            args.wanted
        );
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        anyhow::bail!("--rate: messages per second above 0");
    }
    let duration = args
        .duration
        .as_deref()
        .map(|d| duration_arg("--for", d))
        .transpose()?;
    let workload = Workload {
        publishers: args.publishers,
        subscribers: args.subscribers,
        qos: args.qos,
        payload: args.payload,
        topics: args.topics,
        wanted: args.wanted,
        rate: args.rate,
        messages: args.messages.or(if duration.is_none() {
            Some(100_000)
        } else {
            None
        }),
        duration,
        settle: duration_arg("--settle", &args.settle)?,
    };
    logging("warn");
    let json = args.json;
    if args.pair {
        let dir = std::env::temp_dir().join(format!("mqlink-bench-pair-{}", std::process::id()));
        let r =
            mqlink::bench::pair::pair(&dir, args.qos.min(1), args.messages.unwrap_or(1_000_000));
        let _ = std::fs::remove_dir_all(&dir);
        let r = r?;
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("{}", r.line());
        }
        return Ok(r.delivered == r.fed);
    }
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    if !args.compare {
        let at = run::Endpoints {
            publish: args.publish.clone(),
            subscribe: args
                .subscribe
                .clone()
                .unwrap_or_else(|| args.publish.clone()),
        };
        if !json {
            println!("mqlink bench: {}", workload.describe());
        }
        let r = rt.block_on(run::run("bench", &at, &workload, &[], !json))?;
        if json {
            println!("{}", serde_json::to_string(&r)?);
        } else {
            println!("{}", r.line());
        }
        return Ok(r.lost == 0);
    }
    let opts = compare::CompareOptions {
        setups: args.setups.clone(),
        workload,
        max_lossless: args.max_lossless,
        steps: args.steps,
        step_duration: duration_arg("--step-for", &args.step_for)?,
        batch_delay: duration_arg("--batch-delay", &args.batch_delay)?,
        agent_bin: std::env::current_exe().context("finding the mqlink binary")?,
        dir: std::env::temp_dir().join(format!("mqlink-bench-{}", std::process::id())),
        progress: !json,
        keep: args.keep,
    };
    if !json {
        println!("mqlink bench --compare: {}", opts.workload.describe());
        if !opts.batch_delay.is_zero() {
            println!(
                "agents: broker.batch_delay {}",
                mqlink_config::units::format_duration(opts.batch_delay)
            );
        }
    }
    let result = rt.block_on(compare::compare(&opts, |line| {
        if !json {
            println!("{line}");
        }
    }));
    // Kept on failure: the error names the logs in it.
    let c = result?;
    if args.keep {
        eprintln!("kept {}", opts.dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&opts.dir);
    }
    let charts = c.write_charts(&args.svg)?;
    if json {
        for r in &c.results {
            println!("{}", serde_json::to_string(&r)?);
        }
    } else {
        println!();
        print!("{}", c.table());
        let names: Vec<String> = charts.iter().map(|p| p.display().to_string()).collect();
        println!("charts: {}", names.join(", "));
    }
    Ok(true)
}

/// Logs on stderr, filtered by `RUST_LOG` or else `default`.
/// Logs on stderr; colours only on a terminal (a journal or a file gets
/// plain text).
fn logging(default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn demo(
    regions: usize,
    duration: &str,
    broker: mqlink::federation::BrokerKind,
) -> anyhow::Result<bool> {
    let duration = match duration.trim() {
        "0" => None,
        d => Some(
            mqlink_config::units::parse_duration(d).map_err(|e| anyhow::anyhow!("--for: {e}"))?,
        ),
    };
    logging("warn,quinn=error,rumqttc=error,mqtt5=error");
    let rt = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let report = rt.block_on(mqlink::demo::run(mqlink::demo::DemoOptions {
        regions,
        duration,
        broker,
    }))?;
    // Exit 1 when a region missed something it wanted: the demo claims
    // "received N of N", so anything less is a failure, not a footnote.
    let short: Vec<String> = report
        .deliveries
        .iter()
        .filter(|(_, (got, wanted, _))| got < wanted)
        .map(|(r, (got, wanted, _))| format!("{r} received {got} of {wanted}"))
        .collect();
    if !short.is_empty() {
        eprintln!("mqlink demo: messages were lost: {}", short.join(", "));
    }
    Ok(short.is_empty())
}

/// The agent's runtime: one thread (a current-thread runtime) unless
/// `TOKIO_WORKER_THREADS` asks for a multi-thread one. The agent's work is
/// a pipeline (broker session, core, link streams, QUIC drivers) in which
/// each message crosses several tasks; on two workers most of those
/// hand-offs woke the other thread, and at full QoS 1 load the origin
/// agent spent about a tenth more CPU per message (4.6-4.7 µs against
/// 4.0-4.2 µs, `bench_qos1`, four rounds each, alternated) for no more
/// throughput. A current-thread runtime parks straight on the I/O driver:
/// against a one-worker multi-thread runtime, `mqlink bench --compare`
/// gave 14.2-15.3 / 12.6-13.7 µs per message (origin / destination) at
/// 3,800 msgs/s instead of 16.3 / 13.7, 3.3-3.4 / 2.5 instead of 3.6 / 2.7
/// at 38,000, and p99 1.2-1.3 ms instead of 1.5. The spool has its own
/// thread either way.
fn agent_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Log a reload's outcome (what changed, or why nothing did).
fn log_reload(outcome: &Result<mqlink::reload::Plan, mqlink::reload::ReloadError>) {
    match outcome {
        Ok(plan) => tracing::info!(changes = %plan.summary(), "configuration reloaded"),
        Err(e) => tracing::error!("reload refused: {e}"),
    }
}

fn run(config: &std::path::Path) -> anyhow::Result<()> {
    logging("info,quinn=warn,rumqttc=warn");
    let cfg = mqlink_config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    // Before any thread starts: they inherit it.
    let sched = mqlink::sched::prefer_batch(mqlink::sched::opted_out());
    tracing::debug!(?sched, "scheduling policy");
    let rt = agent_runtime().context("starting the runtime")?;
    rt.block_on(async {
        mqlink::metrics::install(cfg.listen.metrics)?;
        let mut agent = mqlink::run::start(&cfg).await?;
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut reloads = agent.take_reload_requests();
        let failed = agent.take_failed();
        tokio::pin!(failed);
        let failed = loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    r.context("waiting for Ctrl-C")?;
                    break false;
                }
                _ = term.recv() => break false,
                () = &mut failed => break true,
                _ = hup.recv() => {
                    tracing::info!(file = %config.display(), "SIGHUP: reloading");
                    log_reload(&agent.reload_file().await);
                }
                Some(reply) = reloads.recv() => {
                    tracing::info!(file = %config.display(), "reload asked through the admin API");
                    let outcome = agent.reload_file().await;
                    log_reload(&outcome);
                    let _ = reply.send(outcome.map(|p| p.summary()).map_err(|e| e.to_string()));
                }
            }
        };
        tracing::info!("shutting down");
        agent.shutdown().await;
        if failed {
            anyhow::bail!("the agent's core stopped; exiting so the supervisor restarts it");
        }
        Ok(())
    })
}
