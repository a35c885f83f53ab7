//! HdrHistogram's percentile-distribution text format (`.hgrm`), as written by Java's
//! `outputPercentileDistribution` and read by the HdrHistogram plotters.

use std::io::{self, Write};

use hdrhistogram::Histogram;

/// Writes `h` (values in microseconds) as a percentile distribution in milliseconds, with
/// `ticks` reporting steps per halving of the remaining distance to 100%.
pub fn write(h: &Histogram<u64>, ticks: u32, out: &mut impl Write) -> io::Result<()> {
    const SCALE: f64 = 1000.0;
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total: u64 = 0;
    if !h.is_empty() {
        for v in h.iter_quantiles(ticks) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                writeln!(
                    out,
                    "{:12.3} {:2.12} {:10} {:14.2}",
                    value,
                    q,
                    total,
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(out, "{:12.3} {:2.12} {:10}", value, q, total)?;
            }
        }
    }
    let (mean, stdev, max) = if !h.is_empty() {
        (h.mean() / SCALE, h.stdev() / SCALE, h.max() as f64 / SCALE)
    } else {
        (0.0, 0.0, 0.0)
    };
    writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        mean, stdev
    )?;
    writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        max,
        h.len()
    )?;
    // As in HdrHistogram: sub-buckets per bucket = 2^ceil(log2(2 × 10^significant digits)).
    let sub_buckets = 1u64 << (2.0 * 10f64.powi(i32::from(h.sigfig()))).log2().ceil() as u32;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_has_header_rows_and_footer() {
        let mut h = crate::stats::new_hist();
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let mut out = Vec::new();
        write(&h, 5, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].trim_start().starts_with("Value"));
        assert_eq!(lines[1], "");
        // First row: the smallest value (0.001 ms) at percentile 0.
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first[0], "0.001");
        assert_eq!(first[1].parse::<f64>().unwrap(), 0.0);
        // Last data row reaches percentile 1 with every value counted.
        let last_row = lines.iter().rev().find(|l| !l.starts_with('#')).unwrap();
        let cols: Vec<&str> = last_row.split_whitespace().collect();
        assert_eq!(cols[1].parse::<f64>().unwrap(), 1.0);
        assert_eq!(cols[2], "10000");
        assert!(text.contains("Total count    =        10000]"));
        assert!(text.contains("SubBuckets     =         2048]"), "{text}");
        // Values never decrease down the table.
        let values: Vec<f64> = lines[2..]
            .iter()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
            .collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn empty_histogram_still_has_footer() {
        let h = crate::stats::new_hist();
        let mut out = Vec::new();
        write(&h, 5, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Total count    =            0]"));
    }
}
