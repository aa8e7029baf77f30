//! The fleet benchmark's figures: a Markdown table (printed, and written into
//! `docs/benchmarks.md` with the machine and versions), and a plot of the onboarding latencies.

use std::{path::Path, time::Duration};

use anyhow::Context;
use plotters::prelude::*;

use crate::{fleet::Figures, percentile};

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

/// One column per fleet size.
pub fn table(figures: &[Figures]) -> String {
    type Row = (&'static str, fn(&Figures) -> String);
    let rows: [Row; 14] = [
        ("1. Cold start: every comune and service Ready", |f| {
            secs(f.cold)
        }),
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
            "2. Physical limit: `consorzio render` objects (and credentials) applied directly",
            |f| format!("{} in {}", f.direct_objects, secs(f.direct)),
        ),
        ("2. Operator time / direct time (target ≤ 1.25)", |f| {
            format!("{:.2}", f.ratio())
        }),
        (
            "3. Onboarding, apply → Ready: median (target < 1 s)",
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
    let text = match (text.find(BEGIN), text.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{section}{}", &text[..b], &text[e + END.len()..])
        }
        _ => format!("{text}\n{section}\n"),
    };
    std::fs::write(doc, text).with_context(|| format!("writing {}", doc.display()))
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
