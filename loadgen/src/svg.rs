//! Hand-written SVG charts: latency by percentile (HdrHistogram-plotter style, logarithmic
//! percentile axis) and connections online over time during the ramp.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const W: f64 = 800.0;
const H: f64 = 450.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a chart.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points in chart units (x already transformed for log axes).
    pub points: Vec<(f64, f64)>,
}

/// A chart with linear axes over the given ranges; `x_ticks` are (position, label).
fn chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    x_range: (f64, f64),
    x_ticks: &[(f64, String)],
    series: &[Series],
) -> String {
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = nice_ceiling(y_max);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let (x0, x1) = x_range;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0).max(f64::MIN_POSITIVE) * pw;
    let sy = |y: f64| TOP + ph - y / y_max * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        LEFT + pw / 2.0,
        escape(title)
    );
    // Grid and y ticks.
    for i in 0..=5 {
        let v = y_max * i as f64 / 5.0;
        let y = sy(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    for (x, label) in x_ticks {
        let px = sx(*x);
        let _ = writeln!(
            s,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#eee"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 18.0,
            escape(label)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 10.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(y_label)
    );
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            pts.join(" ")
        );
        let ly = TOP + 10.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            W - RIGHT + 12.0,
            W - RIGHT + 32.0,
            W - RIGHT + 38.0,
            ly + 4.0,
            escape(&ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Latency (ms) against percentile, x = log10(1 / (1 - q)) up to 99.999%.
pub fn latency_chart(title: &str, hists: &[(String, &Histogram<u64>)]) -> String {
    let max_x = 5.0;
    let series: Vec<Series> = hists
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let mut points: Vec<(f64, f64)> = h
                .iter_quantiles(5)
                .filter(|v| v.quantile_iterated_to() < 1.0)
                .map(|v| {
                    let q = v.quantile_iterated_to();
                    (
                        (1.0 / (1.0 - q)).log10().min(max_x),
                        v.value_iterated_to() as f64 / 1000.0,
                    )
                })
                .collect();
            points.push((max_x, h.max() as f64 / 1000.0));
            Series {
                name: name.clone(),
                points,
            }
        })
        .collect();
    let ticks: Vec<(f64, String)> = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
        .map(|(i, l)| (i as f64, l.to_string()))
        .collect();
    chart(
        title,
        "percentile",
        "latency (ms)",
        (0.0, max_x),
        &ticks,
        &series,
    )
}

/// Connections online against seconds since the start.
pub fn ramp_chart(title: &str, timeline: &[(f64, u64)]) -> String {
    let end = timeline.last().map(|p| p.0).unwrap_or(1.0).max(1.0);
    let step = nice_ceiling(end) / 5.0;
    let ticks: Vec<(f64, String)> = (0..=5)
        .map(|i| (i as f64 * step, fmt_num(i as f64 * step)))
        .filter(|(x, _)| *x <= end * 1.0001)
        .collect();
    let series = vec![Series {
        name: "online".into(),
        points: timeline.iter().map(|&(t, n)| (t, n as f64)).collect(),
    }];
    chart(title, "seconds", "connections", (0.0, end), &ticks, &series)
}

/// The smallest of 1, 2, 5 × 10^k at or above `v` (1 for non-positive values).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_chart_is_svg_with_one_line_per_histogram() {
        let mut a = crate::stats::new_hist();
        let mut b = crate::stats::new_hist();
        for v in 1..1000u64 {
            a.record(v * 3).unwrap();
            b.record(v * 7).unwrap();
        }
        let svg = latency_chart("lat <test>", &[("a".into(), &a), ("b".into(), &b)]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("lat &lt;test&gt;"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn ramp_chart_has_no_nan_even_when_empty() {
        let svg = ramp_chart("ramp", &[]);
        assert!(!svg.contains("NaN"));
        let svg = ramp_chart("ramp", &[(0.0, 0), (0.5, 100), (1.2, 250)]);
        assert!(svg.contains("<polyline"));
        assert!(!svg.contains("NaN"));
    }

    #[test]
    fn nice_ceilings() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(19_000.0), 20_000.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
    }
}
