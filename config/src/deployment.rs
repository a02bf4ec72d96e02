//! Whole-deployment checks over several region files: what no single file
//! can tell.
//!
//! | check | severity |
//! |---|---|
//! | the same region *and* node in two files | error |
//! | a link to a region no file defines | error |
//! | a link declared on one side only (it would never come up) | error |
//! | regions that cannot reach each other (partition) | error |
//! | export filters of one side that can never pass the other side's import filters (both non-empty) | error |
//! | a link or a region whose loss partitions the deployment | warning |
//! | the two sides of a link configure different costs | warning |
//! | replicas of one region declare different links | warning |
//! | replicas of one region without `broker.shared: true` | error |
//! | the dialling side of a link lists fewer endpoints than the other region has agents | warning |
//!
//! Several files for the same region with different `node` names are
//! replicas of that region, not duplicates. An explicitly empty export list
//! (`export: []`) is a deliberate one-way link and is not reported.

use std::collections::BTreeMap;

use mqlink_topology::{RegionGraph, RegionName, TopicFilter};
use serde::Serialize;

use crate::diagnostic::{Diagnostic, Severity, at};
use crate::region::{LinkConfig, RegionConfig};

/// The outcome of checking a deployment.
#[derive(Debug, Clone, Serialize)]
pub struct Deployment {
    /// Regions, sorted.
    pub regions: Vec<RegionName>,
    /// Links declared on both sides, as (a, b) with a < b.
    pub links: Vec<(RegionName, RegionName)>,
    /// Everything found, errors first, then by file and position.
    pub diagnostics: Vec<Diagnostic>,
}

impl Deployment {
    /// Whether no error was found.
    pub fn is_valid(&self) -> bool {
        !self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

fn list(names: &[RegionName]) -> String {
    names
        .iter()
        .map(|n| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn filters(fs: &[TopicFilter]) -> String {
    format!(
        "[{}]",
        fs.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", ")
    )
}

/// Cross-check the region files of one deployment.
pub fn check_deployment(configs: &[RegionConfig]) -> Deployment {
    let mut diags = Vec::new();

    // Group by region; the first file (in the order given) speaks for the region.
    let mut by_region: BTreeMap<&RegionName, Vec<&RegionConfig>> = BTreeMap::new();
    for c in configs {
        let replicas = by_region.entry(&c.region).or_default();
        if let Some(dup) = replicas.iter().find(|o| o.node == c.node) {
            diags.push(Diagnostic::error(
                &c.file,
                c.region_pos,
                format!(
                    "region `{}` node `{}` is already defined in {}; replicas of a region need distinct `node` names",
                    c.region,
                    c.node,
                    at(&dup.file, dup.region_pos)
                ),
            ));
            continue;
        }
        replicas.push(c);
    }
    for replicas in by_region.values() {
        let first = replicas[0];
        if replicas.len() > 1 {
            for c in replicas.iter().filter(|c| !c.broker.shared) {
                diags.push(Diagnostic::error(
                    &c.file,
                    c.region_pos,
                    format!(
                        "region `{}` has {} agents (replicas) but `{}` does not set `broker.shared: true`; each agent would export every message (duplicates)",
                        c.region,
                        replicas.len(),
                        c.node
                    ),
                ));
            }
        }
        let peers = |c: &RegionConfig| c.links.iter().map(|l| l.region.clone()).collect::<Vec<_>>();
        for other in &replicas[1..] {
            let (mut a, mut b) = (peers(first), peers(other));
            a.sort();
            b.sort();
            if a != b {
                diags.push(Diagnostic::warning(
                    &other.file,
                    other.region_pos,
                    format!(
                        "replica `{}` of region `{}` links to [{}] but replica `{}` ({}) links to [{}]; replicas should declare the same links",
                        other.node,
                        other.region,
                        list(&b),
                        first.node,
                        first.file.display(),
                        list(&a)
                    ),
                ));
            }
        }
    }
    // The dialling side (the first name of a pair) needs an endpoint per agent of the other.
    for c in by_region.values().flatten() {
        for link in c.links.iter().filter(|l| c.region < l.region) {
            let Some(agents) = by_region.get(&link.region) else {
                continue;
            };
            if link.endpoints.len() < agents.len() {
                let mut nodes: Vec<String> = agents.iter().map(|a| a.node.to_string()).collect();
                nodes.sort();
                diags.push(Diagnostic::warning(
                    &c.file,
                    link.pos,
                    format!(
                        "link to `{}` lists {} endpoint(s) but region `{}` has {} agents ({}); list one endpoint per agent, or those left out get no connection from `{}`",
                        link.region,
                        link.endpoints.len(),
                        link.region,
                        agents.len(),
                        nodes.join(", "),
                        c.node
                    ),
                ));
            }
        }
    }
    let rep: BTreeMap<&RegionName, &RegionConfig> =
        by_region.iter().map(|(r, cs)| (*r, cs[0])).collect();
    let regions: Vec<RegionName> = rep.keys().map(|r| (*r).clone()).collect();

    // Links: both sides, costs, export/import.
    let mut edges: Vec<(RegionName, RegionName, u32)> = Vec::new();
    let mut link_pos: BTreeMap<(RegionName, RegionName), (&RegionConfig, &LinkConfig)> =
        BTreeMap::new();
    for (region, c) in &rep {
        for link in &c.links {
            let Some(peer) = rep.get(&link.region) else {
                diags.push(Diagnostic::error(
                    &c.file,
                    link.pos,
                    format!(
                        "link to `{}`, but no file in this deployment defines region `{}` (regions: {})",
                        link.region,
                        link.region,
                        list(&regions)
                    ),
                ));
                continue;
            };
            let Some(back) = peer.links.iter().find(|l| l.region == **region) else {
                diags.push(Diagnostic::error(
                    &c.file,
                    link.pos,
                    format!(
                        "link to `{}` is declared on this side only: {} has no link back to `{region}`, so the link would never come up; add `- region: {region}` to its links",
                        link.region,
                        at(&peer.file, peer.region_pos)
                    ),
                ));
                continue;
            };
            check_direction(&mut diags, c, link, peer, back);
            link_pos.insert(((*region).clone(), link.region.clone()), (c, link));
            if *region < &link.region {
                if let (Some(x), Some(y)) = (link.cost, back.cost)
                    && x != y
                {
                    diags.push(Diagnostic::warning(
                        &c.file,
                        link.cost_pos,
                        format!(
                            "cost {} here but {} at {}; agents use the larger ({})",
                            x.get(),
                            y.get(),
                            at(&peer.file, back.cost_pos),
                            x.max(y).get()
                        ),
                    ));
                }
                let cost = link.cost.max(back.cost).map_or(1, |c| c.get());
                edges.push(((*region).clone(), link.region.clone(), cost));
            }
        }
    }

    let graph = RegionGraph::new(regions.iter().cloned(), edges.iter().cloned());
    check_partitions(&mut diags, &graph, &rep);
    check_single_points(&mut diags, &graph, &rep, &edges, &link_pos);

    diags.sort_by(|a, b| {
        (a.severity, &a.file, a.pos)
            .cmp(&(b.severity, &b.file, b.pos))
            .then_with(|| a.message.cmp(&b.message))
    });
    diags.dedup();
    let links = edges.into_iter().map(|(a, b, _)| (a, b)).collect();
    Deployment {
        regions,
        links,
        diagnostics: diags,
    }
}

/// Messages that `c` exports over `link` must pass `peer`'s import filter on `back`.
fn check_direction(
    diags: &mut Vec<Diagnostic>,
    c: &RegionConfig,
    link: &LinkConfig,
    peer: &RegionConfig,
    back: &LinkConfig,
) {
    if link.export.is_empty() || back.import.is_empty() {
        return;
    }
    if link
        .export
        .iter()
        .any(|e| back.import.iter().any(|i| e.overlaps(i)))
    {
        return;
    }
    diags.push(Diagnostic::error(
        &c.file,
        link.export_pos.or(link.pos),
        format!(
            "nothing `{}` exports to `{}` (export: {}) can pass `{}`'s import filter (import: {} at {}); the link would never carry traffic this way; write `export: []` for a deliberately one-way link",
            c.region,
            peer.region,
            filters(&link.export),
            peer.region,
            filters(&back.import),
            at(&peer.file, back.import_pos.or(back.pos))
        ),
    ));
}

fn check_partitions(
    diags: &mut Vec<Diagnostic>,
    graph: &RegionGraph,
    rep: &BTreeMap<&RegionName, &RegionConfig>,
) {
    let comps = graph.components();
    if comps.len() < 2 {
        return;
    }
    let main = &comps[0];
    for comp in &comps[1..] {
        let Some(c) = comp.first().and_then(|r| rep.get(r)) else {
            continue;
        };
        diags.push(Diagnostic {
            severity: Severity::Error,
            file: Some(c.file.clone()),
            pos: c.region_pos,
            message: format!(
                "partition: {{{}}} cannot reach {{{}}}: no chain of links (declared on both sides) connects them",
                list(comp),
                list(main)
            ),
        });
    }
}

/// The two sides a graph falls into, as "{a, b} off from {c}" text.
fn split(graph: &RegionGraph) -> String {
    let comps = graph.components();
    let sides: Vec<String> = comps
        .iter()
        .rev()
        .map(|c| format!("{{{}}}", list(c)))
        .collect();
    sides.join(" off from ")
}

fn check_single_points(
    diags: &mut Vec<Diagnostic>,
    graph: &RegionGraph,
    rep: &BTreeMap<&RegionName, &RegionConfig>,
    edges: &[(RegionName, RegionName, u32)],
    link_pos: &BTreeMap<(RegionName, RegionName), (&RegionConfig, &LinkConfig)>,
) {
    if graph.len() < 2 {
        return;
    }
    for (a, b) in graph.bridges() {
        let without = RegionGraph::new(
            graph.regions().iter().cloned(),
            edges
                .iter()
                .filter(|(x, y, _)| !(*x == a && *y == b))
                .cloned(),
        );
        let Some((c, link)) = link_pos.get(&(a.clone(), b.clone())) else {
            continue;
        };
        let other = link_pos
            .get(&(b.clone(), a.clone()))
            .map(|(pc, pl)| at(&pc.file, pl.pos))
            .unwrap_or_default();
        diags.push(Diagnostic::warning(
            &c.file,
            link.pos,
            format!(
                "single point of failure: losing the link {a} <-> {b} (also declared at {other}) cuts {}; add another path for redundancy",
                split(&without)
            ),
        ));
    }
    for x in graph.articulation_points() {
        let Some(c) = rep.get(&x) else { continue };
        let without = RegionGraph::new(
            graph.regions().iter().filter(|r| **r != x).cloned(),
            edges.iter().filter(|(p, q, _)| *p != x && *q != x).cloned(),
        );
        diags.push(Diagnostic::warning(
            &c.file,
            c.region_pos,
            format!(
                "single point of failure: losing region `{x}` cuts {}; traffic between them transits `{x}` only",
                split(&without)
            ),
        ));
    }
}
