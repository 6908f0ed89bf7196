//! Throughput over time as a picture: a bar chart for the terminal (one
//! column per interval, eighth-block characters) and the same as an SVG
//! file, with events (a kill, a swap) marked at their time. The demo and
//! the failover benchmarks draw the transfer across a failover with them.

use std::fmt::Write as _;

/// One marked moment: seconds from the start of the series, and a label.
#[derive(Debug, Clone)]
pub struct Mark {
    /// Seconds from the start of the first interval.
    pub at_s: f64,
    /// What happened.
    pub label: String,
}

const BLOCKS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// A bar chart of `values` (one per interval of `interval_s` seconds, in
/// `unit`), `rows` characters high, with the marks under the time axis.
pub fn terminal(
    values: &[f64],
    interval_s: f64,
    unit: &str,
    rows: usize,
    marks: &[Mark],
) -> String {
    let rows = rows.max(2);
    let top = values.iter().copied().fold(0.0_f64, f64::max).max(1e-9);
    let label_w = format!("{top:.0}").len().max(3);
    let mut out = String::new();
    for r in (0..rows).rev() {
        // Row r covers (r/rows, (r+1)/rows] of the top value.
        let label = if r == rows - 1 {
            format!("{top:>label_w$.0}")
        } else if r == 0 {
            format!("{:>label_w$}", 0)
        } else {
            " ".repeat(label_w)
        };
        let _ = write!(out, "{label} |");
        for &v in values {
            let eighths = ((v.max(0.0) / top) * (rows * 8) as f64).round() as usize;
            let here = eighths.saturating_sub(r * 8).min(8);
            out.push(BLOCKS[here]);
        }
        out.push('\n');
    }
    let _ = writeln!(out, "{} +{}", " ".repeat(label_w), "-".repeat(values.len()));
    // Marks: a caret under their column, labels on the line below.
    let col =
        |t: f64| ((t / interval_s).floor().max(0.0) as usize).min(values.len().saturating_sub(1));
    let mut carets = vec![' '; values.len()];
    for m in marks {
        if !values.is_empty() {
            carets[col(m.at_s)] = '^';
        }
    }
    let _ = writeln!(
        out,
        "{}  {}",
        " ".repeat(label_w),
        carets.iter().collect::<String>()
    );
    for m in marks {
        let _ = writeln!(
            out,
            "{}  {}^ {:.1} s: {}",
            " ".repeat(label_w),
            " ".repeat(col(m.at_s)),
            m.at_s,
            m.label
        );
    }
    let _ = writeln!(
        out,
        "{}  {} columns of {} ms each; scale in {unit}",
        " ".repeat(label_w),
        values.len(),
        (interval_s * 1000.0).round()
    );
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The same chart as a standalone SVG document: one bar per interval,
/// axes with the top value and the duration, each mark a red vertical
/// line with its label.
pub fn svg(values: &[f64], interval_s: f64, unit: &str, title: &str, marks: &[Mark]) -> String {
    let (w, h) = (900.0_f64, 360.0_f64);
    let (left, right, top_m, bottom) = (70.0, 20.0, 40.0, 50.0);
    let pw = w - left - right;
    let ph = h - top_m - bottom;
    let top = values.iter().copied().fold(0.0_f64, f64::max).max(1e-9);
    let n = values.len().max(1) as f64;
    let bw = pw / n;
    let duration = n * interval_s;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="22" font-size="15">{}</text>"#,
        esc(title)
    );
    for (i, &v) in values.iter().enumerate() {
        let bh = (v.max(0.0) / top) * ph;
        let _ = writeln!(
            s,
            r##"<rect class="bar" x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="#3b7dd8"/>"##,
            left + i as f64 * bw,
            top_m + ph - bh,
            (bw - 0.5).max(0.5),
            bh
        );
    }
    // Axes and their labels.
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/>"#,
        top_m + ph,
        left + pw,
        top_m + ph
    );
    let _ = writeln!(
        s,
        r#"<line x1="{left}" y1="{top_m}" x2="{left}" y2="{}" stroke="black"/>"#,
        top_m + ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{top:.0} {}</text>"#,
        left - 6.0,
        top_m + 4.0,
        esc(unit)
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">0</text>"#,
        left - 6.0,
        top_m + ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{duration:.1} s</text>"#,
        left + pw,
        top_m + ph + 18.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="{}">0 s ({} ms per bar)</text>"#,
        top_m + ph + 18.0,
        (interval_s * 1000.0).round()
    );
    for m in marks {
        let x = left + (m.at_s / duration.max(1e-9)).clamp(0.0, 1.0) * pw;
        let _ = writeln!(
            s,
            r##"<line class="mark" x1="{x:.2}" y1="{top_m}" x2="{x:.2}" y2="{}" stroke="#d62728" stroke-width="2" stroke-dasharray="5,3"/>"##,
            top_m + ph
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.2}" y="{}" fill="#d62728">{} ({:.1} s)</text>"##,
            x + 4.0,
            top_m + ph + 36.0,
            esc(&m.label),
            m.at_s
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill() -> Vec<Mark> {
        vec![Mark {
            at_s: 0.45,
            label: "kill -9 <fw1>".into(),
        }]
    }

    #[test]
    fn the_terminal_chart_has_a_column_per_interval_and_marks_the_kill() {
        let v = [10.0, 10.0, 10.0, 10.0, 0.0, 10.0, 5.0, 10.0];
        let t = terminal(&v, 0.1, "Mbit/s", 4, &kill());
        let lines: Vec<&str> = t.lines().collect();
        // Four rows of bars, the axis, the carets, the mark's label, the
        // legend.
        assert_eq!(lines.len(), 8, "{t}");
        let top = lines[0].split('|').nth(1).unwrap();
        assert_eq!(top.chars().count(), v.len());
        assert_eq!(
            top.chars().nth(4),
            Some(' '),
            "the empty interval is empty: {t}"
        );
        assert_eq!(top.chars().next(), Some('█'), "{t}");
        let bottom = lines[3].split('|').nth(1).unwrap();
        assert_eq!(
            bottom.chars().nth(6),
            Some('█'),
            "half height fills the lower rows: {t}"
        );
        assert_eq!(lines[0].split('|').next().unwrap().trim(), "10");
        let carets = lines[5];
        assert_eq!(
            carets.find('^'),
            Some(lines[4].find('+').unwrap() + 1 + 4),
            "{t}"
        );
        assert!(
            lines[6].contains("0.5 s: kill -9 <fw1>") || lines[6].contains("0.4 s: kill -9 <fw1>"),
            "{t}"
        );
    }

    #[test]
    fn the_svg_has_a_bar_per_interval_and_an_escaped_mark() {
        let v = [1.0, 2.0, 3.0, 0.0];
        let s = svg(&v, 0.1, "Mbit/s", "a & b", &kill());
        assert!(s.starts_with("<svg "), "{s}");
        assert!(s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches(r#"class="bar""#).count(), 4);
        assert_eq!(s.matches(r#"class="mark""#).count(), 1);
        assert!(s.contains("kill -9 &lt;fw1&gt;"), "{s}");
        assert!(s.contains("a &amp; b"));
        assert!(!s.contains("<fw1>"));
        // The kill at 0.45 s of 0.4 s is clamped to the right edge.
        assert!(s.contains(r#"x1="880.00""#), "{s}");
    }
}
