//! Line figures, and grouped bar figures, as PNG files: plotters on an RGB buffer, text in DejaVu Sans (bundled by the
//! `dejavu` crate, so no system font or fontconfig is needed), encoded with `png`.

use crate::ReportError;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

/// Figure size in pixels.
pub(crate) const WIDTH: u32 = 1200;
/// Figure size in pixels.
pub(crate) const HEIGHT: u32 = 700;

/// Line colours, in order of the series of a figure (Tableau 10: distinct, strong on white).
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// One line of a figure.
pub(crate) struct Series {
    pub name: String,
    pub color: (u8, u8, u8),
    pub points: Vec<(f64, f64)>,
}

/// A figure: its title, axis labels (with units) and series; `empty` says why there is no data.
pub(crate) struct Figure {
    pub title: String,
    pub x_label: &'static str,
    pub y_label: &'static str,
    pub series: Vec<Series>,
    /// Why there is nothing to plot (put in the title); `None` when `series` has points.
    pub empty: Option<String>,
    /// Scientific tick labels (learning rates).
    pub scientific: bool,
    /// Also mark each point (sparse series such as evaluations).
    pub markers: bool,
    /// Draw y = 0 (a cosine's sign matters).
    pub zero_line: bool,
    /// A bar figure: the names of the groups along x. Each series then gives one bar per group
    /// (its point `(group index, value)`), side by side within the group, from 0.
    pub bars: Option<Vec<String>>,
}

impl Figure {
    pub fn new(title: &str, x_label: &'static str, y_label: &'static str) -> Figure {
        Figure {
            title: title.into(),
            x_label,
            y_label,
            series: Vec::new(),
            empty: None,
            scientific: false,
            markers: false,
            zero_line: false,
            bars: None,
        }
    }

    /// A grouped bar figure over `groups` (see [`Figure::bars`]).
    pub fn bars(title: &str, groups: Vec<String>, y_label: &'static str) -> Figure {
        Figure { bars: Some(groups), ..Figure::new(title, "", y_label) }
    }

    /// Adds a series unless it has no finite point (an all-null field is left out).
    pub fn add(&mut self, name: &str, points: impl IntoIterator<Item = (f64, Option<f64>)>) {
        let points: Vec<(f64, f64)> =
            points.into_iter().filter_map(|(x, y)| y.filter(|y| y.is_finite()).map(|y| (x, y))).collect();
        if !points.is_empty() {
            let color = PALETTE[self.series.len() % PALETTE.len()];
            self.series.push(Series { name: name.into(), color, points });
        }
    }

    /// When no series has data: records why (the title then says "no data: why").
    pub fn if_empty(&mut self, why: &str) {
        if self.series.is_empty() {
            self.empty = Some(why.into());
        }
    }

    /// Draws the figure and writes it to `path` as PNG.
    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        register_font()?;
        let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
        self.draw(&mut buffer)
            .map_err(|e| ReportError::Plot { path: path.to_path_buf(), reason: e.to_string() })?;
        let mut bytes = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut bytes, WIDTH, HEIGHT);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let encode = |e: png::EncodingError| ReportError::Plot {
                path: path.to_path_buf(),
                reason: format!("PNG encoding: {e}"),
            };
            let mut writer = encoder.write_header().map_err(encode)?;
            writer.write_image_data(&buffer).map_err(encode)?;
            writer.finish().map_err(encode)?;
        }
        std::fs::write(path, bytes).map_err(|error| ReportError::io(path, error))
    }

    fn draw(&self, buffer: &mut [u8]) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let root = BitMapBackend::with_buffer(buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let title = match &self.empty {
            Some(_) => format!("{} (no data)", self.title),
            None => self.title.clone(),
        };
        let (x_range, y_range, legend) = self.layout();
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 30).into_font())
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(if self.scientific { 110 } else { 90 })
            .build_cartesian_2d(x_range.clone(), y_range.clone())?;
        let (scientific, empty) = (self.scientific, self.empty.is_some());
        let y_format = move |y: &f64| {
            let text = if empty {
                String::new()
            } else if scientific {
                format!("{y:.1e}")
            } else {
                let span = y_range.end - y_range.start;
                let decimals = (2.0 - span.log10().floor()).clamp(0.0, 6.0) as usize;
                format!("{y:.decimals$}")
            };
            // no "-0.000"
            match text.strip_prefix('-') {
                Some(rest) if rest.bytes().all(|b| matches!(b, b'0' | b'.' | b'e')) => rest.to_string(),
                _ => text,
            }
        };
        let groups = self.bars.clone();
        let x_format = move |x: &f64| match &groups {
            _ if empty => String::new(),
            // a group's name under its centre, nothing between groups
            Some(names) if (x - x.round()).abs() < 1e-6 && x.round() >= 0.0 => {
                names.get(x.round() as usize).cloned().unwrap_or_default()
            }
            Some(_) => String::new(),
            None => format!("{x:.0}"),
        };
        // at most one tick per step (or group): no repeated labels on a short run
        let x_ticks = match &self.bars {
            Some(names) => names.len().max(1),
            None => ((x_range.end - x_range.start).floor() as usize + 1).clamp(2, 12),
        };
        chart
            .configure_mesh()
            .x_desc(self.x_label)
            .y_desc(self.y_label)
            .x_labels(x_ticks)
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .label_style(("sans-serif", 18))
            .axis_desc_style(("sans-serif", 22))
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(210, 210, 210))
            .draw()?;
        if let Some(why) = &self.empty {
            let center = ((x_range.start + x_range.end) / 2.0, (y_range.start + y_range.end) / 2.0);
            let style = TextStyle::from(("sans-serif", 26).into_font()).color(&RGBColor(120, 120, 120)).pos(
                plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ),
            );
            chart.draw_series(std::iter::once(Text::new(format!("no data: {why}"), center, style)))?;
            root.present()?;
            return Ok(());
        }
        if self.zero_line && y_range.start < 0.0 && y_range.end > 0.0 {
            let zero = vec![(x_range.start, 0.0), (x_range.end, 0.0)];
            chart.draw_series(LineSeries::new(zero, RGBColor(90, 90, 90).stroke_width(1)))?;
        }
        let width = 0.8 / self.series.len().max(1) as f64;
        for (i, series) in self.series.iter().enumerate() {
            let (r, g, b) = series.color;
            let color = RGBColor(r, g, b);
            if self.bars.is_some() {
                let left = |x: f64| x - 0.4 + i as f64 * width;
                chart
                    .draw_series(series.points.iter().map(|&(x, y)| {
                        Rectangle::new([(left(x), 0.0), (left(x) + width * 0.9, y)], color.filled())
                    }))?
                    .label(series.name.as_str())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 8), (x + 30, y + 8)], color.filled()));
                continue;
            }
            chart
                .draw_series(LineSeries::new(series.points.iter().copied(), color.stroke_width(3)))?
                .label(series.name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 30, y)], color.stroke_width(3)));
            if self.markers || series.points.len() == 1 {
                chart.draw_series(series.points.iter().map(|p| Circle::new(*p, 5, color.filled())))?;
            }
        }
        chart
            .configure_series_labels()
            .position(legend)
            .margin(12)
            .legend_area_size(40)
            .label_font(("sans-serif", 20))
            .background_style(WHITE.mix(0.9))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// The x range (steps) and the y range (padded by 6 %) of all points.
    fn ranges(&self) -> (Range<f64>, Range<f64>) {
        let points = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) =
            (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in points {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            return (0.0..1.0, 0.0..1.0);
        }
        if x1 - x0 < 1.0 {
            (x0, x1) = (x0 - 1.0, x1 + 1.0);
        }
        let span = y1 - y0;
        let pad = if span > 0.0 { span * 0.06 } else { (y0.abs() * 0.1).max(1e-3) };
        (x0..x1, (y0 - pad)..(y1 + pad))
    }

    /// The ranges and where the legend goes: the plot corner whose legend box covers the fewest
    /// points of the lines (sampled along each segment); where every corner covers some, the
    /// y range grows upwards to leave the legend a free band above the data.
    fn layout(&self) -> (Range<f64>, Range<f64>, SeriesLabelPosition) {
        if let Some(groups) = &self.bars {
            // bars from 0; the legend in a free band above the highest
            let top = self.series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max);
            let top = if top > 0.0 { top * 1.4 } else { 1.0 };
            return (-0.5..groups.len() as f64 - 0.5, 0.0..top, SeriesLabelPosition::UpperRight);
        }
        let (x, y) = self.ranges();
        // the legend box as a fraction of the plot area (20 px labels, about 11 px a character)
        let chars = self.series.iter().map(|s| s.name.chars().count()).max().unwrap_or(0) as f64;
        let box_w = ((70.0 + 11.0 * chars) / f64::from(WIDTH - 150)).min(0.9);
        let box_h = ((20.0 + 27.0 * self.series.len() as f64) / f64::from(HEIGHT - 150)).min(0.9);
        let (width, height) = (x.end - x.start, y.end - y.start);
        let mut samples = Vec::new();
        for series in &self.series {
            for pair in series.points.windows(2) {
                let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
                samples.extend((0..=40).map(|i| {
                    let t = f64::from(i) / 40.0;
                    (((x0 + t * (x1 - x0)) - x.start) / width, ((y0 + t * (y1 - y0)) - y.start) / height)
                }));
            }
            samples.extend(
                series.points.iter().map(|(px, py)| ((px - x.start) / width, (py - y.start) / height)),
            );
        }
        let corners = [
            (SeriesLabelPosition::UpperRight, true, true),
            (SeriesLabelPosition::UpperLeft, false, true),
            (SeriesLabelPosition::LowerRight, true, false),
            (SeriesLabelPosition::LowerLeft, false, false),
        ];
        let covered = |right: bool, upper: bool| {
            let margin = 0.04;
            samples
                .iter()
                .filter(|(fx, fy)| {
                    let in_x = if right { *fx > 1.0 - box_w - margin } else { *fx < box_w + margin };
                    let in_y = if upper { *fy > 1.0 - box_h - margin } else { *fy < box_h + margin };
                    in_x && in_y
                })
                .count()
        };
        let mut best = (usize::MAX, SeriesLabelPosition::UpperRight);
        for (position, right, upper) in corners {
            let n = covered(right, upper);
            if n < best.0 {
                best = (n, position);
            }
        }
        if best.0 == 0 || self.series.is_empty() {
            return (x, y, best.1);
        }
        // all data below 1 - box_h - margin of the grown range
        let top = y.start + height / (1.0 - box_h - 0.06).max(0.3);
        (x, y.start..top, SeriesLabelPosition::UpperRight)
    }
}

/// Registers DejaVu Sans as plotters' `sans-serif` font (once per process).
fn register_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(ReportError::Plot {
            path: "DejaVuSans.ttf".into(),
            reason: "the bundled font does not parse".into(),
        })
    }
}

/// The pixels of a figure this crate wrote, as RGB triples, with its width and height (for
/// checking a figure without looking at it).
pub fn read_rgb(path: &std::path::Path) -> Result<(Vec<[u8; 3]>, u32, u32), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buffer =
        vec![0; reader.output_buffer_size().ok_or_else(|| format!("{}: no image size", path.display()))?];
    let info = reader.next_frame(&mut buffer).map_err(|e| format!("{}: {e}", path.display()))?;
    if info.color_type != png::ColorType::Rgb {
        return Err(format!("{}: {:?} pixels, not RGB", path.display(), info.color_type));
    }
    let rgb = buffer[..info.buffer_size()].chunks(3).map(|c| [c[0], c[1], c[2]]).collect();
    Ok((rgb, info.width, info.height))
}
