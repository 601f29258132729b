//! The results as a markdown table and an SVG chart, stamped with the date and the machine.
use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::Result;

use crate::{stats::MeanInterval, verdict::Verdict};

/// One row of the table.
pub struct Row {
    pub measurement: String,
    pub result: String,
    pub goal: String,
    pub verdict: Verdict,
    /// For the chart, if the figure is a ratio measured over rounds.
    pub bar: Option<Bar>,
}

/// A ratio to the goal's reference, per round, against the goal it must reach.
pub struct Bar {
    pub label: String,
    pub ratio: MeanInterval,
    pub goal: f64,
}

pub fn machine() -> String {
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let cpu = fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
    });
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory_gib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!(
        "Linux {}, {} × {}, {:.0} GiB",
        kernel.unwrap_or_default(),
        cores,
        cpu.unwrap_or_else(|| "unknown CPU".into()),
        memory_gib
    )
}

pub fn markdown(date: &str, machine: &str, mode: &str, rows: &[Row]) -> String {
    let mut text = format!(
        "# drainer benchmark\n\n{date} · {machine} · `cargo xtask bench{mode}`, loopback, variants alternated round by round\n\n\
         | measurement | result | goal | verdict |\n|---|---|---|---|\n"
    );
    for row in rows {
        let verdict = match row.verdict {
            Verdict::NotMet => "**no**".to_owned(),
            verdict => verdict.to_string(),
        };
        let _ = writeln!(
            text,
            "| {} | {} | {} | {verdict} |",
            row.measurement, row.result, row.goal,
        );
    }
    text
}

/// Horizontal bars: each ratio's mean against its goal line, with its 95% interval as a whisker.
pub fn svg(date: &str, rows: &[Row]) -> String {
    let bars: Vec<(&Bar, Verdict)> = rows
        .iter()
        .filter_map(|r| Some((r.bar.as_ref()?, r.verdict)))
        .collect();
    let (width, left, top, bar_height, gap) = (760.0, 260.0, 63.0, 26.0, 14.0);
    let height = top + 25.0 + bars.len() as f64 * (bar_height + gap);
    // One round's interval is unbounded: its whisker is left out rather than stretching the scale.
    let right_end = |bar: &Bar| {
        let high = bar.ratio.high();
        let drawn = if high.is_finite() {
            high
        } else {
            bar.ratio.mean
        };
        drawn.max(bar.goal)
    };
    let max = bars
        .iter()
        .map(|(bar, _)| right_end(bar))
        .fold(1.0f64, f64::max)
        * 1.1;
    let x = |v: f64| left + (width - left - 40.0) * v.max(0.0) / max;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">drainer / reference, each round measured side by side ({date})</text>\n\
         <text x=\"10\" y=\"42\">bar: mean over rounds; whisker: its 95% interval; black line: goal; grey: the rounds cannot tell</text>\n"
    );
    for (i, (bar, verdict)) in bars.iter().enumerate() {
        let y = top + i as f64 * (bar_height + gap);
        let middle = y + bar_height / 2.0;
        let color = match verdict {
            Verdict::Met => "#3a7d44",
            Verdict::NotMet => "#b33",
            Verdict::CannotTell { .. } => "#999",
        };
        let mean = bar.ratio.mean;
        let _ = write!(
            svg,
            "<text x=\"10\" y=\"{:.1}\">{}</text>\n<rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar_height}\" fill=\"{color}\"/>\n\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"/>\n",
            y + 17.0,
            escape(&bar.label),
            x(mean) - left,
            x(bar.goal),
            x(bar.goal),
            y - 3.0,
            y + bar_height + 3.0,
        );
        if bar.ratio.high().is_finite() {
            let (low, high) = (x(bar.ratio.low()), x(bar.ratio.high()));
            let (tick_top, tick_bottom) = (middle - 5.0, middle + 5.0);
            let _ = writeln!(
                svg,
                "<path d=\"M{low:.1} {middle:.1}H{high:.1}M{low:.1} {tick_top:.1}V{tick_bottom:.1}M{high:.1} {tick_top:.1}V{tick_bottom:.1}\" stroke=\"black\" stroke-width=\"1\" fill=\"none\"/>"
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\">{mean:.3}</text>",
            x(right_end(bar)) + 6.0,
            y + 17.0,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Writes `<name>.md` and `<name>.svg` into `dir`.
pub fn write(dir: &Path, name: &str, markdown: &str, svg: &str) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(format!("{name}.md")), markdown)?;
    fs::write(dir.join(format!("{name}.svg")), svg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::RoundsNeeded;

    fn ratio_row(verdict: Verdict, rounds: &[f64]) -> Row {
        Row {
            measurement: "a ratio".into(),
            result: String::new(),
            goal: "≥ 0.99".into(),
            verdict,
            bar: Some(Bar {
                label: "a ratio".into(),
                ratio: MeanInterval::of(rounds),
                goal: 0.99,
            }),
        }
    }

    fn rows() -> Vec<Row> {
        vec![
            ratio_row(Verdict::Met, &[1.02, 1.03, 1.04]),
            ratio_row(Verdict::NotMet, &[0.90, 0.91, 0.92]),
            ratio_row(
                Verdict::CannotTell {
                    rounds: 3,
                    needed: RoundsNeeded::About(40),
                },
                &[0.95, 0.98, 1.01],
            ),
            ratio_row(
                Verdict::CannotTell {
                    rounds: 1,
                    needed: RoundsNeeded::Unknown,
                },
                &[0.98],
            ),
        ]
    }

    #[test]
    fn the_last_column_says_the_verdict() {
        let table = markdown("today", "a machine", "", &rows());
        let verdicts: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("| a ratio"))
            .map(|l| l.trim_end_matches(" |").rsplit(" | ").next().unwrap())
            .collect();
        assert_eq!(
            verdicts,
            [
                "yes",
                "**no**",
                "cannot tell at 3 rounds (about 40 would)",
                "cannot tell at 1 round"
            ]
        );
    }

    #[test]
    fn the_chart_colours_each_verdict_and_whiskers_only_bounded_intervals() {
        let chart = svg("today", &rows());
        for color in ["#3a7d44", "#b33", "#999"] {
            assert!(chart.contains(&format!("fill=\"{color}\"")), "{color}");
        }
        assert_eq!(chart.matches("<path ").count(), 3, "{chart}");
    }
}
