//! Usage plots: bar charts as inline SVG (no script, no external asset).
//!
//! Usage reports are sparse (only buckets with data); [`dense`] lays them
//! out on a fixed grid of slots (24 hours, 30 days) so that a quiet hour
//! is a visible gap, not a missing bar.

use std::fmt::Write as _;

use super::render::esc;

/// `n` slots of `step` seconds, the last one holding `now`, with each
/// `(start, value)` point added to the slot it falls in (points outside
/// are dropped). Returns each slot's start and total, oldest first.
pub(super) fn dense(points: &[(i64, u64)], now: i64, step: i64, n: usize) -> Vec<(i64, u64)> {
    let step = step.max(1);
    let last = now.div_euclid(step) * step;
    let count = i64::try_from(n).unwrap_or(0);
    let first = last - step * (count - 1);
    let mut slots: Vec<(i64, u64)> = (0..count).map(|i| (first + i * step, 0)).collect();
    for &(start, value) in points {
        if start < first || start >= last + step {
            continue;
        }
        let i = usize::try_from((start - first) / step).unwrap_or(usize::MAX);
        if let Some(slot) = slots.get_mut(i) {
            slot.1 = slot.1.saturating_add(value);
        }
    }
    slots
}

/// A bar chart of `slots` (oldest first) with an accessible title, the
/// peak value, and `first`/`last` labels under the ends. Each bar has a
/// `<title>` with its label and value (a tooltip).
pub(super) fn bars(
    id: &str,
    title: &str,
    slots: &[(String, u64)],
    first: &str,
    last: &str,
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 150.0;
    const PAD: f64 = 24.0;
    let max = slots.iter().map(|s| s.1).max().unwrap_or(0);
    let total: u64 = slots.iter().map(|s| s.1).sum();
    let top = max.max(1) as f64;
    let width = if slots.is_empty() {
        0.0
    } else {
        (W - 2.0 * PAD) / slots.len() as f64
    };
    let mut h = String::new();
    let _ = write!(
        h,
        "<svg id=\"{id}\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{t}\" data-total=\"{total}\">\
         <text x=\"{PAD}\" y=\"16\" font-size=\"12\">{t}: {total} in all, peak {max}</text>\
         <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#bbb\"/>",
        id = esc(id),
        t = esc(title),
        b = H - PAD,
        r = W - PAD,
    );
    for (i, (label, v)) in slots.iter().enumerate() {
        let bar = (*v as f64 / top) * (H - 2.0 * PAD - 12.0);
        let x = PAD + width * i as f64 + 1.0;
        let y = H - PAD - bar;
        let _ = write!(
            h,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{bar:.1}\" fill=\"#2a6\"><title>{l}: {v}</title></rect>",
            w = (width - 2.0).max(1.0),
            l = esc(label),
        );
    }
    let _ = write!(
        h,
        "<text x=\"{PAD}\" y=\"{l}\" font-size=\"10\" fill=\"#777\">{f}</text>\
         <text x=\"{r}\" y=\"{l}\" font-size=\"10\" fill=\"#777\" text-anchor=\"end\">{e}</text></svg>",
        l = H - 8.0,
        r = W - PAD,
        f = esc(first),
        e = esc(last),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_points_fill_a_fixed_grid() {
        let hour = 3600;
        let now = 100 * hour + 1800; // half past the hundredth hour
        let cases: [(&str, Vec<(i64, u64)>, Vec<u64>); 4] = [
            ("nothing", vec![], vec![0, 0, 0]),
            (
                "one per slot, oldest first",
                vec![(98 * hour, 1), (99 * hour, 2), (100 * hour, 3)],
                vec![1, 2, 3],
            ),
            (
                "a gap, and two points in one slot",
                vec![(98 * hour, 4), (100 * hour, 1), (100 * hour + 60, 1)],
                vec![4, 0, 2],
            ),
            (
                "too old and in the future are dropped",
                vec![(97 * hour, 9), (101 * hour, 9), (99 * hour, 5)],
                vec![0, 5, 0],
            ),
        ];
        for (name, points, want) in cases {
            let got = dense(&points, now, hour, 3);
            assert_eq!(got.iter().map(|s| s.1).collect::<Vec<_>>(), want, "{name}");
            assert_eq!(got[0].0, 98 * hour, "{name}: first slot start");
            assert_eq!(got[2].0, 100 * hour, "{name}: last slot holds now");
        }
    }

    #[test]
    fn bars_scale_and_escape() {
        let slots = vec![
            ("a<b".to_owned(), 5),
            ("c".to_owned(), 10),
            ("d".to_owned(), 0),
        ];
        let svg = bars("usage-x", "Calls <all>", &slots, "−24 h", "now");
        assert!(svg.contains("data-total=\"15\""), "{svg}");
        assert!(
            svg.contains("Calls &lt;all&gt;: 15 in all, peak 10"),
            "{svg}"
        );
        assert!(svg.contains("<title>a&lt;b: 5</title>"), "{svg}");
        assert_eq!(svg.matches("<rect").count(), 3);
        // The peak bar is full height (150 - 2*24 - 12 = 90), half of it 45.
        assert!(svg.contains("height=\"90.0\""), "{svg}");
        assert!(svg.contains("height=\"45.0\""), "{svg}");
        assert!(svg.contains("height=\"0.0\""), "{svg}");
        let empty = bars("e", "Nothing", &[], "", "");
        assert!(empty.contains("0 in all, peak 0"), "{empty}");
    }
}
