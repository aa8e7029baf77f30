//! The fleet benchmark's figures: a Markdown table (printed, and written into
//! `docs/benchmarks.md` with the machine, versions and command line), and a plot of the
//! onboarding latencies.

use std::{path::Path, time::Duration};

use anyhow::Context;
use consorzio_testkit::Cluster;
use kube::Client;
use plotters::prelude::*;

use crate::{
    fleet::{Figures, Options},
    percentile,
};

const BEGIN: &str = "<!-- consorzio-bench fleet: begin (generated, do not edit) -->";
const END: &str = "<!-- consorzio-bench fleet: end -->";
pub const PLOT: &str = "onboarding-latency.svg";

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One column per fleet size. Each row name starts with its scenario's number, as
/// docs/benchmarks.md describes them.
pub fn table(figures: &[Figures]) -> String {
    type Row = (&'static str, fn(&Figures) -> String);
    let rows: [Row; 17] = [
        (
            "1. Cold start: every comune and service Ready, from the operator leading (caches filled)",
            |f| secs(f.cold),
        ),
        (
            "1. Cold start: the same, from the operator's process start",
            |f| secs(f.cold_from_process),
        ),
        ("1. Cold start: operator API writes (per comune)", |f| {
            format!(
                "{} ({:.1})",
                f.cold_writes,
                f.cold_writes as f64 / f.n as f64
            )
        }),
        ("1. Cold start: operator peak RSS", |f| mib(f.cold_peak_kib)),
        ("1. Cold start: operator CPU time", |f| {
            format!("{:.1} s", f.cold_cpu_seconds)
        }),
        (
            "2. Physical limit: `consorzio render` objects (and credentials) applied directly, fastest run",
            |f| {
                let (concurrency, time) = f.direct();
                format!(
                    "{} in {} ({concurrency} in flight)",
                    f.direct_objects,
                    secs(time)
                )
            },
        ),
        ("2. Physical limit: each run, by requests in flight", |f| {
            f.direct_runs
                .iter()
                .map(|(concurrency, time)| format!("{concurrency}: {}", secs(*time)))
                .collect::<Vec<_>>()
                .join("; ")
        }),
        ("2. Operator time / direct time (target ≤ 1.25)", |f| {
            format!("{:.2}", f.ratio())
        }),
        (
            "3. Onboarding, apply → Ready (watch event): median (target < 1 s)",
            |f| ms(percentile(&f.onboarding, 0.5)),
        ),
        ("3. Onboarding: p95", |f| {
            ms(percentile(&f.onboarding, 0.95))
        }),
        ("3. Onboarding: p99 (target < 2 s)", |f| {
            ms(percentile(&f.onboarding, 0.99))
        }),
        ("4. No-op resync: API writes (target 0)", |f| {
            f.resync_writes.to_string()
        }),
        (
            "4. No-op resync: writes counted once the operator wrote nothing for",
            |f| format!("{} s", f.resync_quiet),
        ),
        ("4. No-op resync: start → every object reconciled", |f| {
            secs(f.resync)
        }),
        (
            "4. No-op resync: operator peak RSS (target < 64 MiB at 1,000)",
            |f| mib(f.resync_peak_kib),
        ),
        ("5. New image, whole fleet: rollout done", |f| {
            secs(f.rollout)
        }),
        ("5. Rollout waves of (10 % of the fleet)", |f| {
            format!("{} comuni", f.rollout_wave)
        }),
    ];
    let mut out = String::from("| Comuni (N) |");
    for f in figures {
        out.push_str(&format!(" {} |", f.n));
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(figures.len()));
    for (name, value) in rows {
        out.push_str(&format!("\n| {name} |"));
        for f in figures {
            out.push_str(&format!(" {} |", value(f)));
        }
    }
    out
}

/// Writes the figures between the generated-section markers of `doc` (appending the section
/// if the markers are missing) and the plot beside it.
pub fn write(doc: &Path, figures: &[Figures], context: &str) -> anyhow::Result<()> {
    let dir = doc.parent().context("the report's directory")?;
    std::fs::create_dir_all(dir)?;
    plot(&dir.join(PLOT), figures)?;
    let section = format!(
        "{BEGIN}\n{context}\n\n{}\n\n![Onboarding latency, apply to Ready, by fleet size]({PLOT})\n{END}",
        table(figures)
    );
    let text = std::fs::read_to_string(doc).unwrap_or_default();
    std::fs::write(doc, splice(&text, &section))
        .with_context(|| format!("writing {}", doc.display()))
}

/// `text` with the generated section replaced by `section` (markers included), or with
/// `section` appended when `text` has no markers.
fn splice(text: &str, section: &str) -> String {
    match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &text[..b], &text[e + END.len()..])
        }
        _ => format!("{text}\n{section}\n"),
    }
}

/// The cumulative distribution of onboarding latencies, one line per fleet size.
fn plot(path: &Path, figures: &[Figures]) -> anyhow::Result<()> {
    let max_ms = figures
        .iter()
        .filter_map(|f| f.onboarding.last())
        .map(|d| d.as_secs_f64() * 1000.0)
        .fold(100.0, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Onboarding latency: apply → Ready, one comune at a time",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_ms, 0.0..1.0)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms)")
        .y_desc("share of comuni onboarded within")
        .y_label_formatter(&|v: &f64| format!("{:.0} %", *v * 100.0))
        .draw()?;
    for (i, f) in figures.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let count = f.onboarding.len() as f64;
        let points = f.onboarding.iter().enumerate().flat_map(|(k, d)| {
            let x = d.as_secs_f64() * 1000.0;
            [(x, k as f64 / count), (x, (k + 1) as f64 / count)]
        });
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(format!("fleet of {} comuni", f.n))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The machine, versions and command, for the report.
pub async fn context(
    cluster: &Cluster,
    client: &Client,
    options: &Options,
) -> anyhow::Result<String> {
    let run = |program: &Path, args: &[&str]| -> String {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, v)| v.trim())
        })
        .unwrap_or("unknown CPU");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemTotal:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    let kubernetes = client.apiserver_version().await?.git_version;
    let etcd = run(&cluster.bin("kcp"), &["etcd", "--version"]);
    let etcd = etcd
        .lines()
        .next()
        .unwrap_or_default()
        .replace("Version: ", "");
    let kwok = run(&cluster.bin("kwok"), &["--version"]);
    let kwok = kwok.split_whitespace().nth(2).unwrap_or("unknown");
    let sizes: Vec<String> = options.sizes.iter().map(|n| n.to_string()).collect();
    Ok(format!(
        "Measured on {date} with `consorzio-bench fleet --municipalities {sizes} --onboard {onboard} --concurrency {concurrency} \
         --direct-concurrency {direct} --resync-quiet {quiet}` \
         (release build; `make bench BENCH_SIZES=...` runs it), consorzio {commit}.\n\n\
         - Machine: {model}, {cores} cores, {memory:.0} GiB; {kernel}\n\
         - Control plane (tests/cluster): Kubernetes {kubernetes}, {etcd}, kwok {kwok}\n\
         - {rustc}",
        date = run(Path::new("date"), &["-u", "+%Y-%m-%d %H:%M UTC"]),
        sizes = sizes.join(","),
        onboard = options.onboard,
        concurrency = options.concurrency,
        direct = options
            .direct_concurrency
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
        quiet = options.resync_quiet,
        commit = run(Path::new("git"), &["describe", "--always", "--dirty"]),
        memory = memory_kib as f64 / 1024.0 / 1024.0,
        kernel = run(Path::new("uname"), &["-sr"]),
        rustc = run(Path::new("rustc"), &["--version"]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page the benchmark writes into by default (`make bench`).
    const PAGE: &str = include_str!("../../../docs/benchmarks.md");

    fn figures() -> Figures {
        Figures {
            n: 100,
            direct_objects: 2414,
            direct_runs: vec![
                (16, Duration::from_secs(16)),
                (32, Duration::from_secs(15)),
                (64, Duration::from_secs(17)),
            ],
            cold: Duration::from_secs(18),
            cold_from_process: Duration::from_secs(19),
            cold_writes: 2731,
            cold_peak_kib: 29_000,
            cold_cpu_seconds: 1.7,
            onboarding: vec![Duration::from_millis(180), Duration::from_millis(500)],
            resync: Duration::from_millis(400),
            resync_quiet: 150,
            resync_writes: 0,
            resync_peak_kib: 25_000,
            rollout: Duration::from_secs(14),
            rollout_wave: 15,
        }
    }

    #[test]
    fn the_ratio_is_against_the_fastest_direct_run() {
        let f = figures();
        assert_eq!(f.direct(), (32, Duration::from_secs(15)));
        assert!((f.ratio() - 1.2).abs() < 1e-9);
        let table = table(&[f]);
        assert!(
            table.contains("| 2414 in 15.0 s (32 in flight) |"),
            "{table}"
        );
        assert!(
            table.contains("| 16: 16.0 s; 32: 15.0 s; 64: 17.0 s |"),
            "{table}"
        );
        assert!(table.contains("| 1.20 |"), "{table}");
    }

    #[test]
    fn every_row_names_a_scenario_the_page_describes() {
        let table = table(&[figures()]);
        for row in table.lines().skip(2) {
            let number = row
                .trim_start_matches("| ")
                .split('.')
                .next()
                .unwrap_or_default();
            assert!(
                PAGE.contains(&format!("### {number}. ")),
                "no scenario {number} in docs/benchmarks.md, for row {row}"
            );
        }
    }

    #[test]
    fn the_section_replaces_the_generated_block_of_the_page_and_nothing_else() {
        assert_eq!(PAGE.matches(BEGIN).count(), 1);
        assert_eq!(PAGE.matches(END).count(), 1);
        let section = format!("{BEGIN}\nnew figures\n{END}");
        let written = splice(PAGE, &section);
        let (b, e) = (
            PAGE.find(BEGIN).unwrap(),
            PAGE.find(END).unwrap() + END.len(),
        );
        assert_eq!(written, format!("{}{section}{}", &PAGE[..b], &PAGE[e..]));
        assert!(written.starts_with("# Benchmarks"));
    }

    #[test]
    fn a_page_without_markers_gets_the_section_appended() {
        let section = format!("{BEGIN}\nfigures\n{END}");
        assert_eq!(
            splice("# Title\n", &section),
            format!("# Title\n\n{section}\n")
        );
    }
}
