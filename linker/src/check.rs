//! `mqlink check`: load every file, report per-file problems, and, when
//! there are several files and all of them load, cross-check them as one
//! deployment.

use std::io::Write;

use mqlink_config::{Deployment, Diagnostic, RegionConfig, check_deployment, load, missing_files};
use serde::Serialize;

use crate::cli::CheckArgs;

/// One file in the JSON report.
#[derive(Debug, Serialize)]
struct FileReport {
    /// The path as given.
    file: String,
    /// The region it defines, if it loaded.
    region: Option<String>,
    /// The node it defines, if it loaded.
    node: Option<String>,
    /// Number of links, if it loaded.
    links: Option<usize>,
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct Report {
    /// Whether the check passed (no errors, and no warnings under `--deny-warnings`).
    valid: bool,
    /// Number of errors.
    errors: usize,
    /// Number of warnings.
    warnings: usize,
    /// The files.
    files: Vec<FileReport>,
    /// Deployment-level results, when cross-checks ran.
    deployment: Option<Deployment>,
    /// Every finding.
    diagnostics: Vec<Diagnostic>,
}

/// Run the check; returns whether it passed. The only errors are those of
/// writing the report to `out` (problems in the files are findings).
pub fn run(args: &CheckArgs, out: &mut impl Write) -> std::io::Result<bool> {
    let mut diagnostics = Vec::new();
    let mut configs: Vec<RegionConfig> = Vec::new();
    let mut files = Vec::new();
    for path in &args.configs {
        match load(path) {
            Ok(config) => {
                if args.files {
                    diagnostics.extend(missing_files(&config));
                }
                let c = &config;
                files.push(FileReport {
                    file: path.display().to_string(),
                    region: Some(c.region.to_string()),
                    node: Some(c.node.to_string()),
                    links: Some(c.links.len()),
                });
                configs.push(config);
            }
            Err(e) => {
                diagnostics.extend(e.diagnostics);
                files.push(FileReport {
                    file: path.display().to_string(),
                    region: None,
                    node: None,
                    links: None,
                });
            }
        }
    }
    if let Some(f) = &args.broker_conf {
        diagnostics.extend(crate::broker_conf::check(f, &configs));
    }
    let all_loaded = configs.len() == args.configs.len();
    let deployment = (all_loaded && configs.len() > 1).then(|| check_deployment(&configs));
    if let Some(d) = &deployment {
        diagnostics.extend(d.diagnostics.iter().cloned());
    }
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics.len() - errors;
    let valid = errors == 0 && !(args.deny_warnings && warnings > 0);

    if args.json {
        let report = Report {
            valid,
            errors,
            warnings,
            files,
            deployment,
            diagnostics,
        };
        serde_json::to_writer_pretty(&mut *out, &report)?;
        writeln!(out)?;
        return Ok(valid);
    }

    for d in &diagnostics {
        writeln!(out, "{d}")?;
    }
    if !diagnostics.is_empty() {
        writeln!(out)?;
    }
    for (f, c) in files.iter().filter(|f| f.region.is_some()).zip(&configs) {
        let peers: Vec<&str> = c.links.iter().map(|l| l.region.as_str()).collect();
        writeln!(
            out,
            "  {:<14} node {:<16} links to [{}]  ({})",
            c.region,
            c.node,
            peers.join(", "),
            f.file
        )?;
    }
    let verdict = if valid { "valid" } else { "INVALID" };
    let counts = format!(
        "{errors} error{}, {warnings} warning{}",
        plural(errors),
        plural(warnings)
    );
    match &deployment {
        Some(d) => {
            let names: Vec<&str> = d.regions.iter().map(|r| r.as_str()).collect();
            let (r, l) = (d.regions.len(), d.links.len());
            writeln!(
                out,
                "deployment of {r} region{} ({}) and {l} link{}: {verdict} ({counts})",
                plural(r),
                names.join(", "),
                plural(l)
            )?;
        }
        None if !all_loaded && args.configs.len() > 1 => {
            writeln!(
                out,
                "{verdict} ({counts}); deployment cross-checks skipped until every file loads"
            )?;
        }
        None => writeln!(out, "{verdict} ({counts})")?,
    }
    Ok(valid)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
