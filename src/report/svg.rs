//! Line charts as self-contained SVG: one panel per facet, one line per series, error
//! bars from each point's interval. No scripts, fonts or external files, so a report
//! opens offline and a chart can be committed next to the numbers it shows.

use std::fmt::Write;

/// One point of a series: its mean and the interval drawn as an error bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub lo: f64,
    pub hi: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub panels: Vec<Panel>,
    /// A logarithmic x axis (budgets that double).
    pub log_x: bool,
    /// An optional horizontal reference line (a target level), drawn dashed in every panel.
    pub reference: Option<(String, Vec<f64>)>,
}

/// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
const PALETTE: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];

const PANEL_W: f64 = 420.0;
const PANEL_H: f64 = 300.0;
const MARGIN_L: f64 = 60.0;
const MARGIN_R: f64 = 16.0;
const MARGIN_T: f64 = 56.0;
const MARGIN_B: f64 = 48.0;
const LEGEND_H: f64 = 28.0;

/// Tick positions covering [lo, hi]: steps of 1, 2 or 5 times a power of ten, about
/// `target` of them.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let exponent = raw.log10().floor() as i32;
    let scale = |units: f64| {
        // units · 10^exponent, divided rather than multiplied by a negative power so that
        // 0.6 comes out as 0.6, not 0.6000000000000001.
        if exponent < 0 {
            units / 10f64.powi(-exponent)
        } else {
            units * 10f64.powi(exponent)
        }
    };
    let mantissa = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| scale(*m) >= raw)
        .unwrap_or(10.0);
    let step = scale(mantissa);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| scale(k as f64 * mantissa)).collect()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn label(v: f64) -> String {
    if v == v.round() && v.abs() < 1e6 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The chart as an SVG document.
pub fn render(chart: &Chart) -> String {
    let panels = chart.panels.len().max(1);
    // Wide enough for the title at 15 px (about 8 px a character).
    let width = (PANEL_W * panels as f64).max(8.0 * chart.title.chars().count() as f64 + 40.0);
    let height = PANEL_H + LEGEND_H;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        svg,
        r#"<rect width="{width}" height="{height}" fill="white"/><text x="{}" y="20" text-anchor="middle" font-size="15">{}</text>"#,
        width / 2.0,
        escape(&chart.title)
    );
    // One y range for all panels, so they compare at a glance.
    let all = chart
        .panels
        .iter()
        .flat_map(|p| &p.series)
        .flat_map(|s| &s.points);
    let (mut y_lo, mut y_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut x_lo, mut x_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in all {
        for y in [p.lo, p.hi, p.y] {
            if y.is_finite() {
                y_lo = y_lo.min(y);
                y_hi = y_hi.max(y);
            }
        }
        x_lo = x_lo.min(p.x);
        x_hi = x_hi.max(p.x);
    }
    if let Some((_, levels)) = &chart.reference {
        for &y in levels.iter().filter(|y| y.is_finite()) {
            y_lo = y_lo.min(y);
            y_hi = y_hi.max(y);
        }
    }
    if !y_lo.is_finite() {
        (y_lo, y_hi) = (0.0, 1.0);
    }
    if y_hi - y_lo < 1e-9 {
        y_lo -= 0.5;
        y_hi += 0.5;
    }
    let pad = (y_hi - y_lo) * 0.05;
    let (y_lo, y_hi) = (y_lo - pad, y_hi + pad);
    if !x_lo.is_finite() {
        (x_lo, x_hi) = (0.0, 1.0);
    }
    let log_x = chart.log_x && x_lo > 0.0;
    let tx = |x: f64| if log_x { x.ln() } else { x };
    let (tx_lo, tx_hi) = {
        let (a, b) = (tx(x_lo), tx(x_hi));
        if b - a < 1e-9 {
            (a - 1.0, b + 1.0)
        } else {
            let pad = (b - a) * 0.04;
            (a - pad, b + pad)
        }
    };
    let plot_w = PANEL_W - MARGIN_L - MARGIN_R;
    let plot_h = PANEL_H - MARGIN_T - MARGIN_B;
    let x_ticks: Vec<f64> = if log_x {
        let mut xs: Vec<f64> = chart
            .panels
            .iter()
            .flat_map(|p| &p.series)
            .flat_map(|s| s.points.iter().map(|p| p.x))
            .collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        xs
    } else {
        nice_ticks(x_lo, x_hi, 6)
    };
    let y_ticks = nice_ticks(y_lo, y_hi, 6);

    for (k, panel) in chart.panels.iter().enumerate() {
        let left = k as f64 * PANEL_W + MARGIN_L;
        let top = MARGIN_T;
        let px = |x: f64| left + (tx(x) - tx_lo) / (tx_hi - tx_lo) * plot_w;
        let py = |y: f64| top + (1.0 - (y - y_lo) / (y_hi - y_lo)) * plot_h;
        let _ = write!(
            svg,
            r#"<text x="{}" y="42" text-anchor="middle" font-size="13">{}</text>"#,
            left + plot_w / 2.0,
            escape(&panel.title)
        );
        let _ = write!(
            svg,
            r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
        );
        for &t in &y_ticks {
            let y = py(t);
            let _ = write!(
                svg,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + plot_w,
                left - 6.0,
                y + 4.0,
                label(t)
            );
        }
        for &t in &x_ticks {
            let x = px(t);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" x2="{x:.1}" y1="{top}" y2="{}" stroke="#e5e5e5"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
                top + plot_h,
                top + plot_h + 16.0,
                label(t)
            );
        }
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            left + plot_w / 2.0,
            top + plot_h + 36.0,
            escape(&chart.x_label)
        );
        let _ = write!(
            svg,
            r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">{}</text>"#,
            left - 44.0,
            top + plot_h / 2.0,
            escape(&chart.y_label)
        );
        if let Some((_, levels)) = &chart.reference
            && let Some(&level) = levels.get(k)
            && level.is_finite()
        {
            let y = py(level);
            let _ = write!(
                svg,
                r##"<line x1="{left}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#777" stroke-dasharray="5,4"/>"##,
                left + plot_w
            );
        }
        for (i, series) in panel.series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let points: Vec<String> = series
                .points
                .iter()
                .filter(|p| p.y.is_finite())
                .map(|p| format!("{:.1},{:.1}", px(p.x), py(p.y)))
                .collect();
            let _ = write!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            for p in series.points.iter().filter(|p| p.y.is_finite()) {
                let (x, y) = (px(p.x), py(p.y));
                if p.lo.is_finite() && p.hi.is_finite() && p.hi > p.lo {
                    let (a, b) = (py(p.lo), py(p.hi));
                    let _ = write!(
                        svg,
                        r#"<line x1="{x:.1}" x2="{x:.1}" y1="{a:.1}" y2="{b:.1}" stroke="{color}"/><line x1="{:.1}" x2="{:.1}" y1="{a:.1}" y2="{a:.1}" stroke="{color}"/><line x1="{:.1}" x2="{:.1}" y1="{b:.1}" y2="{b:.1}" stroke="{color}"/>"#,
                        x - 3.0,
                        x + 3.0,
                        x - 3.0,
                        x + 3.0
                    );
                }
                let _ = write!(
                    svg,
                    r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"><title>{}: x {} mean {} [{}, {}]</title></circle>"#,
                    escape(&series.name),
                    label(p.x),
                    label(p.y),
                    label(p.lo),
                    label(p.hi)
                );
            }
        }
    }
    // The legend: the series names of the first panel (all panels share them).
    let names: Vec<&str> = chart
        .panels
        .first()
        .map(|p| p.series.iter().map(|s| s.name.as_str()).collect())
        .unwrap_or_default();
    let mut x = MARGIN_L;
    let y = PANEL_H + 10.0;
    for (i, name) in names.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let _ = write!(
            svg,
            r#"<line x1="{x}" x2="{}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            x + 18.0,
            x + 24.0,
            y + 4.0,
            escape(name)
        );
        x += 40.0 + 7.0 * name.chars().count() as f64;
    }
    if let Some((name, _)) = &chart.reference {
        let _ = write!(
            svg,
            r##"<line x1="{x}" x2="{}" y1="{y}" y2="{y}" stroke="#777" stroke-dasharray="5,4"/><text x="{}" y="{}">{}</text>"##,
            x + 18.0,
            x + 24.0,
            y + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// One bar: its label, value and optional interval.
pub type Bar = (String, f64, Option<(f64, f64)>);

/// Horizontal bars with optional intervals, one per (label, value, lo, hi), on a shared
/// scale from `min` to `max` (win rates: 0 to 1, with a reference line at 0.5, say).
pub fn bars(title: &str, rows: &[Bar], min: f64, max: f64, reference: Option<f64>) -> String {
    let row_h = 26.0;
    let (left, width) = (170.0, 300.0);
    let height = 40.0 + row_h * rows.len() as f64 + 24.0;
    let total_w = left + width + 70.0;
    let x = |v: f64| left + (v - min) / (max - min).max(1e-12) * width;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{height}" viewBox="0 0 {total_w} {height}" font-family="sans-serif" font-size="12"><rect width="{total_w}" height="{height}" fill="white"/><text x="{}" y="20" text-anchor="middle" font-size="14">{}</text>"#,
        total_w / 2.0,
        escape(title)
    );
    for (i, (name, value, interval)) in rows.iter().enumerate() {
        let y = 34.0 + row_h * i as f64;
        let color = PALETTE[i % PALETTE.len()];
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{}" y="{y}" width="{:.1}" height="{}" fill="{color}" opacity="0.8"/><text x="{:.1}" y="{}">{}</text>"#,
            left - 6.0,
            y + 15.0,
            escape(name),
            x(min),
            (x(value.clamp(min, max)) - x(min)).max(0.0),
            row_h - 8.0,
            x(max) + 6.0,
            y + 15.0,
            label(*value)
        );
        if let Some((lo, hi)) = interval {
            let mid = y + (row_h - 8.0) / 2.0;
            let _ = write!(
                svg,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{mid}" y2="{mid}" stroke="#222"/>"##,
                x(lo.clamp(min, max)),
                x(hi.clamp(min, max))
            );
        }
    }
    let bottom = 34.0 + row_h * rows.len() as f64;
    for t in nice_ticks(min, max, 4) {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle">{}</text>"##,
            x(t),
            bottom + 14.0,
            label(t)
        );
    }
    if let Some(r) = reference {
        let _ = write!(
            svg,
            r##"<line x1="{:.1}" x2="{:.1}" y1="30" y2="{bottom}" stroke="#777" stroke-dasharray="5,4"/>"##,
            x(r),
            x(r)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(nice_ticks(0.0, 1.0, 5), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
        assert_eq!(nice_ticks(0.53, 0.97, 5), vec![0.6, 0.7, 0.8, 0.9]);
        assert_eq!(
            nice_ticks(0.0, 800.0, 4),
            vec![0.0, 200.0, 400.0, 600.0, 800.0]
        );
    }

    #[test]
    fn a_chart_has_one_line_per_series_per_panel_and_escapes_text() {
        let series = |name: &str, shift: f64| Series {
            name: name.into(),
            points: (1..=3)
                .map(|i| Point {
                    x: 25.0 * f64::from(1 << i),
                    y: 0.5 + 0.1 * f64::from(i) + shift,
                    lo: 0.45 + 0.1 * f64::from(i) + shift,
                    hi: 0.55 + 0.1 * f64::from(i) + shift,
                })
                .collect(),
        };
        let chart = Chart {
            title: "accuracy <held-out> & more".into(),
            x_label: "labels".into(),
            y_label: "accuracy".into(),
            panels: vec![
                Panel {
                    title: "T=0.2".into(),
                    series: vec![series("d-optimal", 0.0), series("uniform", -0.05)],
                },
                Panel {
                    title: "T=1.5".into(),
                    series: vec![series("d-optimal", -0.1), series("uniform", -0.1)],
                },
            ],
            log_x: true,
            reference: Some(("uniform's final".into(), vec![0.75, 0.7])),
        };
        let svg = render(&chart);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches("<circle").count(), 12);
        assert!(svg.contains("accuracy &lt;held-out&gt; &amp; more"));
        assert!(!svg.contains("<script") && !svg.contains("href"));
        assert_eq!(
            svg.matches("stroke-dasharray").count(),
            3,
            "two panels and the legend"
        );
    }

    #[test]
    fn bars_draw_one_rect_per_row() {
        let svg = bars(
            "win rate <vs sft>",
            &[
                ("ppo".into(), 0.7, Some((0.6, 0.8))),
                ("dpo".into(), 0.55, None),
            ],
            0.0,
            1.0,
            Some(0.5),
        );
        assert_eq!(svg.matches("<rect").count(), 3, "background and two bars");
        assert!(svg.contains("win rate &lt;vs sft&gt;"));
        assert_eq!(svg.matches("stroke-dasharray").count(), 1);
    }
}
