//! The results as a markdown table and an SVG chart, stamped with the date and the machine.
use std::{fmt::Write as _, fs, path::Path, process::Command};

use anyhow::Result;

/// One row of the table.
pub struct Row {
    pub measurement: String,
    pub result: String,
    pub goal: String,
    pub met: bool,
    /// For the chart: the measured ratio to the goal's reference, if the figure is a ratio.
    pub ratio: Option<(String, f64, f64)>,
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
         | measurement | result | goal | met |\n|---|---|---|---|\n"
    );
    for row in rows {
        let _ = writeln!(
            text,
            "| {} | {} | {} | {} |",
            row.measurement,
            row.result,
            row.goal,
            if row.met { "yes" } else { "**no**" }
        );
    }
    text
}

/// Horizontal bars: each ratio against its goal line.
pub fn svg(date: &str, rows: &[Row]) -> String {
    let bars: Vec<&(String, f64, f64)> = rows.iter().filter_map(|r| r.ratio.as_ref()).collect();
    let (width, left, bar_height, gap) = (760.0, 260.0, 26.0, 14.0);
    let height = 70.0 + bars.len() as f64 * (bar_height + gap);
    let max = bars
        .iter()
        .map(|(_, v, g)| v.max(*g))
        .fold(1.0f64, f64::max)
        * 1.1;
    let x = |v: f64| left + (width - left - 40.0) * v / max;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"22\" font-size=\"15\">drainer / reference, same run ({date}); black line: goal</text>\n"
    );
    for (i, (label, value, goal)) in bars.iter().enumerate() {
        let y = 45.0 + i as f64 * (bar_height + gap);
        let color = if value >= goal { "#3a7d44" } else { "#b33" };
        let _ = write!(
            svg,
            "<text x=\"10\" y=\"{:.1}\">{}</text>\n<rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar_height}\" fill=\"{color}\"/>\n\
             <line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-width=\"2\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">{value:.3}</text>\n",
            y + 17.0,
            escape(label),
            x(*value) - left,
            x(*goal),
            x(*goal),
            y - 3.0,
            y + bar_height + 3.0,
            x(*value) + 6.0,
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
