//! Draws one frame of `tracer top` from the [`App`]: the tabs, a banner
//! while findings are active, the status line (sort, filter, pause), the
//! view's table, the selected row's details and sparklines, the key hints,
//! and the help on top when asked. Fits 80x24; wider and taller terminals
//! give the text columns and the table more room. Colours are the
//! terminal's own plus red/yellow for severities, none under `NO_COLOR`
//! (emphasis then comes from bold, reverse and dim).

use ratatui::{
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Clear, Paragraph, Row as TableRow, Sparkline, Table, TableState, Wrap},
    Frame,
};

use super::{
    app::{App, Screen},
    rows::{Row, View},
};
use crate::analysis::Severity;

/// How things look: with colours, or without (`NO_COLOR`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Theme {
    pub(crate) color: bool,
}

impl Theme {
    /// `NO_COLOR` set to anything but the empty string turns colours off
    /// (no-color.org).
    pub(crate) fn from_env() -> Self {
        Theme { color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) }
    }

    fn severity(self, severity: Severity) -> Style {
        match (self.color, severity) {
            (true, Severity::Critical) => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            (true, Severity::Warning) => Style::new().fg(Color::Yellow),
            (false, Severity::Critical) => Style::new().add_modifier(Modifier::BOLD),
            (false, Severity::Warning) => Style::new(),
        }
    }

    fn banner(self) -> Style {
        let style = Style::new().add_modifier(Modifier::BOLD);
        if self.color {
            style.fg(Color::Red)
        } else {
            style.add_modifier(Modifier::REVERSED)
        }
    }

    fn accent(self) -> Style {
        if self.color {
            Style::new().fg(Color::Cyan)
        } else {
            Style::new()
        }
    }
}

const HELP: &[(&str, &str)] = &[
    ("q, Ctrl-C", "quit"),
    ("?", "this help (any key closes it)"),
    ("Tab / Right, Shift-Tab / Left", "next / previous view"),
    ("1 2 3 4 5", "processes, flows, ports, sockets, findings"),
    ("Up Down j k PgUp PgDn Home End", "select a row (its history shows below)"),
    ("s / S", "sort by the next / previous column"),
    ("r", "reverse the sort"),
    ("/", "filter as you type (comm, remote, port), Enter keeps"),
    ("Esc", "clear the filter"),
    ("p, Space", "pause / resume the display (counting goes on)"),
];

/// Draws the whole frame.
pub(crate) fn draw(frame: &mut Frame<'_>, app: &mut App, theme: Theme) {
    let area = frame.area();
    let view = app.view;
    let help = app.help;
    let editing = app.editing;
    let filter = app.filter.clone();
    let backend = app.backend;
    let screen = app.screen();
    let findings = screen.data.findings.len();
    let detail_height = match view {
        View::Findings | View::Sockets => 3,
        _ => 5,
    };
    let [tabs, banner, status, table, detail, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::from(findings > 0)),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(detail_height),
        Constraint::Length(1),
    ])
    .areas(area);

    draw_tabs(frame, tabs, view, &screen, backend, theme);
    if findings > 0 {
        let first = &screen.data.findings[0];
        let text = format!(
            " ! {findings} finding{} active: {} {} (press 5)",
            if findings == 1 { "" } else { "s" },
            first.kind,
            super::rows::inert(&first.summary)
        );
        frame.render_widget(Paragraph::new(text).style(theme.banner()), banner);
    }
    draw_status(frame, status, view, &screen, &filter, editing, theme);
    let page = draw_table(frame, table, view, &screen, !filter.is_empty(), theme);
    draw_detail(frame, detail, &screen);
    frame.render_widget(
        Paragraph::new(" q quit  ? help  Tab view  s sort  r reverse  / filter  p pause")
            .style(Style::new().add_modifier(Modifier::DIM)),
        footer,
    );
    drop(screen);
    app.page = page;
    if help {
        draw_help(frame, area, theme);
    }
}

fn draw_tabs(frame: &mut Frame<'_>, area: Rect, view: View, screen: &Screen<'_>, backend: &str, theme: Theme) {
    let mut spans = vec![Span::styled(" top", theme.accent().add_modifier(Modifier::BOLD))];
    for (i, each) in View::ALL.iter().enumerate() {
        let label = format!(" {} {} ", i + 1, each.title());
        let style =
            if *each == view { Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD) } else { Style::new() };
        spans.push(Span::styled(label, style));
    }
    let right = format!("{:.0}s {backend} ", screen.data.now_secs);
    let [left_area, right_area] =
        Layout::horizontal([Constraint::Min(0), Constraint::Length(right.len() as u16)]).areas(area);
    frame.render_widget(Paragraph::new(Line::from(spans)), left_area);
    frame.render_widget(
        Paragraph::new(right).alignment(Alignment::Right).style(Style::new().add_modifier(Modifier::DIM)),
        right_area,
    );
}

fn draw_status(
    frame: &mut Frame<'_>,
    area: Rect,
    view: View,
    screen: &Screen<'_>,
    filter: &str,
    editing: bool,
    theme: Theme,
) {
    let column = view.columns()[screen.sort_column.min(view.columns().len() - 1)];
    let order = match (column.text, screen.reversed) {
        (true, false) | (false, true) => "A-Z / smallest first",
        (true, true) | (false, false) => "largest first",
    };
    let mut spans = vec![Span::raw(format!(" sort: {} ({order})", column.header))];
    if editing || !filter.is_empty() {
        let text = format!("  filter: {}{}", super::rows::inert(filter), if editing { "_" } else { "" });
        spans.push(Span::styled(text, theme.accent().add_modifier(Modifier::BOLD)));
    }
    if screen.paused {
        spans.push(Span::styled("  PAUSED", Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED)));
    }
    let data = screen.data;
    let extra = match view {
        View::Sockets => {
            let states: Vec<String> = data.host_sockets.iter().map(|(state, n)| format!("{state} {n}")).collect();
            format!("  host: {}", if states.is_empty() { "-".to_owned() } else { states.join(" ") })
        }
        _ => format!("  {} rows, {} sockets tracked", screen.rows.len(), data.live_sockets),
    };
    spans.push(Span::styled(extra, Style::new().add_modifier(Modifier::DIM)));
    if data.events_dropped > 0 {
        spans
            .push(Span::styled(format!("  {} events dropped", data.events_dropped), theme.severity(Severity::Warning)));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// Draws the table; returns how many rows fit (a page).
fn draw_table(
    frame: &mut Frame<'_>,
    area: Rect,
    view: View,
    screen: &Screen<'_>,
    filtered: bool,
    theme: Theme,
) -> usize {
    let columns = view.columns();
    let widths: Vec<Constraint> =
        columns.iter().map(|c| if c.text { Constraint::Min(c.width) } else { Constraint::Length(c.width) }).collect();
    let header = TableRow::new(columns.iter().enumerate().map(|(i, column)| {
        let line =
            if column.text { Line::from(column.header) } else { Line::from(column.header).alignment(Alignment::Right) };
        let style =
            if i == screen.sort_column { Style::new().add_modifier(Modifier::UNDERLINED) } else { Style::new() };
        Cell::from(line).style(style)
    }))
    .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = screen.rows.iter().map(|row| table_row(row, columns, theme));
    let empty = screen.rows.is_empty();
    let table = Table::new(rows, widths)
        .header(header)
        .column_spacing(1)
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state = TableState::default().with_selected(screen.selected);
    frame.render_stateful_widget(table, area, &mut state);
    if empty && area.height > 2 {
        let text = match view {
            _ if filtered => "  no row matches the filter",
            View::Findings => "  no findings",
            View::Sockets => "  no socket in CLOSE_WAIT",
            _ => "  no TCP traffic seen yet",
        };
        let below = Rect { y: area.y + 1, height: 1, ..area };
        frame.render_widget(Paragraph::new(text).style(Style::new().add_modifier(Modifier::DIM)), below);
    }
    usize::from(area.height.saturating_sub(1))
}

fn table_row<'a>(row: &'a Row, columns: &[super::rows::Column], theme: Theme) -> TableRow<'a> {
    let cells = row.cells.iter().zip(columns).map(|(text, column)| {
        let line = Line::from(text.as_str());
        Cell::from(if column.text { line } else { line.alignment(Alignment::Right) })
    });
    let mut style = Style::new();
    if row.gone {
        style = style.add_modifier(Modifier::DIM);
    }
    if let Some(severity) = row.severity {
        style = style.patch(theme.severity(severity));
    }
    TableRow::new(cells).style(style)
}

fn draw_detail(frame: &mut Frame<'_>, area: Rect, screen: &Screen<'_>) {
    let Some(row) = screen.selected.and_then(|i| screen.rows.get(i)) else { return };
    let history = &row.detail.history;
    let lines: Vec<Line<'_>> = row.detail.lines.iter().map(|l| Line::from(format!(" {l}"))).collect();
    let text = Paragraph::new(lines).wrap(Wrap { trim: false });
    if history.is_empty() {
        frame.render_widget(text, area);
        return;
    }
    let [text_area, spark_in, spark_out] =
        Layout::vertical([Constraint::Min(0), Constraint::Length(1), Constraint::Length(1)]).areas(area);
    frame.render_widget(text, text_area);
    for (area, label, pick) in [
        (spark_in, " in  ", (|p: &(u64, u64)| p.0) as fn(&(u64, u64)) -> u64),
        (spark_out, " out ", |p: &(u64, u64)| p.1),
    ] {
        let [label_area, spark_area] = Layout::horizontal([Constraint::Length(5), Constraint::Min(1)]).areas(area);
        frame.render_widget(Paragraph::new(label).style(Style::new().add_modifier(Modifier::DIM)), label_area);
        let width = usize::from(spark_area.width);
        let skip = history.len().saturating_sub(width);
        let points: Vec<u64> = history.iter().skip(skip).map(pick).collect();
        frame.render_widget(Sparkline::default().data(points), spark_area);
    }
}

fn draw_help(frame: &mut Frame<'_>, area: Rect, theme: Theme) {
    let width = area.width.min(78);
    let height = area.height.min(HELP.len() as u16 + 4);
    let popup = Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height };
    let mut lines = vec![Line::from(Span::styled(" tracer top: keys", theme.accent().add_modifier(Modifier::BOLD)))];
    lines.extend(HELP.iter().map(|(keys, what)| Line::from(format!(" {keys:<31} {what}"))));
    lines.push(Line::from(" Dimmed rows: exited processes, closed flows (kept 60 s)."));
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).style(Style::new().add_modifier(Modifier::REVERSED)).wrap(Wrap { trim: false }),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::{backend::TestBackend, crossterm::event::KeyCode, Terminal};

    use super::*;
    use crate::{
        analysis::Finding,
        cmd::top::{
            app::tests::{press, sample_app, type_text},
            data::tests::{key, tick},
        },
    };

    /// The frame as text, one line per terminal row, and its buffer.
    fn render(app: &mut App, theme: Theme, width: u16, height: u16) -> (String, ratatui::buffer::Buffer) {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        terminal.draw(|frame| draw(frame, app, theme)).expect("draws");
        let buffer = terminal.backend().buffer().clone();
        let mut text = String::new();
        for y in 0..height {
            for x in 0..width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        (text, buffer)
    }

    const COLOR: Theme = Theme { color: true };
    const NO_COLOR: Theme = Theme { color: false };

    #[test]
    fn processes_fit_80x24() {
        let mut app = sample_app();
        let (text, _) = render(&mut app, COLOR, 80, 24);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 24);
        assert!(lines[0].contains("1 processes") && lines[0].contains("5 findings"), "{text}");
        assert!(lines[1].contains("sort: IN/s (largest first)"), "{text}");
        let header = lines[2];
        for column in ["PID", "COMM", "IN/s", "OUT/s", "EST", "CLOSE_W", "RETR"] {
            assert!(header.contains(column), "{column} missing from {header:?}");
        }
        assert!(lines[3].contains("10 curl") && lines[3].contains("4.9K"), "{text}");
        assert!(text.contains("pid 10 curl: sockets ESTABLISHED 1"), "{text}");
        assert!(text.contains("in 10000 B (4.9 KiB/s), out 200 B"), "{text}");
        assert!(lines[23].contains("q quit"), "{text}");
    }

    #[test]
    fn flows_show_remote_rtt_and_exact_totals_when_selected() {
        let mut app = sample_app();
        press(&mut app, KeyCode::Char('2'));
        press(&mut app, KeyCode::Char('/'));
        type_text(&mut app, "wget");
        let (text, _) = render(&mut app, COLOR, 80, 24);
        assert!(text.contains("filter: wget_"), "{text}");
        let row = text.lines().nth(3).expect("first row");
        assert!(row.starts_with("wget ") && row.contains(" 10.0.0.2:80 "), "{text}");
        assert!(text.contains("1.5 ms"), "{text}");
        assert!(text.contains("pid 11 wget client 10.0.0.2:80"), "{text}");
        assert!(text.contains("in 1400 B"), "{text}");
        assert!(!text.contains("curl"), "{text}");
    }

    #[test]
    fn banner_while_findings_are_active_and_the_findings_view() {
        let mut app = App::new("fentry");
        let a = key(10, "127.0.0.1", 9);
        let mut input = tick(1.0, &[(a, "client", 0, 0)], false);
        input.snapshot.findings.push(Finding {
            kind: "connect_failures",
            severity: Severity::Warning,
            pid: 10,
            comm: "client".into(),
            remote_addr: Some("127.0.0.1".into()),
            port: Some(9),
            summary: "5 of 5 connects to 127.0.0.1:9 failed".into(),
            evidence: serde_json::json!({"attempts": 5}),
        });
        app.on_tick(&input);
        let (text, buffer) = render(&mut app, COLOR, 80, 24);
        let banner = text.lines().nth(1).expect("line 2");
        assert!(banner.contains("1 finding active: connect_failures 5 of 5 connects"), "{text}");
        assert_eq!(buffer[(3, 1)].fg, Color::Red);
        press(&mut app, KeyCode::Char('5'));
        let (text, buffer) = render(&mut app, COLOR, 80, 24);
        assert!(text.contains("WARN connect_failures"), "{text}");
        assert!(text.contains("client(10) 127.0.0.1:9"), "{text}");
        assert!(text.contains("{\"attempts\":5}"), "{text}");
        let row = text.lines().position(|l| l.contains("WARN")).expect("finding row") as u16;
        assert_eq!(buffer[(1, row)].fg, Color::Yellow);
    }

    #[test]
    fn no_color_draws_no_colour() {
        let mut app = sample_app();
        let a = key(10, "10.0.0.1", 443);
        let mut input = tick(3.0, &[(a, "curl", 1, 1)], true);
        input.snapshot.findings.push(Finding {
            kind: "traffic_growth",
            severity: Severity::Critical,
            pid: 10,
            comm: "curl".into(),
            remote_addr: None,
            port: None,
            summary: "grew".into(),
            evidence: serde_json::json!({}),
        });
        app.on_tick(&input);
        for view in ['1', '2', '3', '4', '5', '?'] {
            press(&mut app, KeyCode::Char(view));
            let (_, buffer) = render(&mut app, NO_COLOR, 80, 24);
            for cell in buffer.content() {
                assert_eq!((cell.fg, cell.bg), (Color::Reset, Color::Reset), "view {view}: {cell:?}");
            }
        }
    }

    #[test]
    fn exited_rows_are_dim() {
        let mut app = sample_app();
        let (text, buffer) = render(&mut app, NO_COLOR, 80, 24);
        let nc = text.lines().position(|l| l.contains(" nc ")).expect("nc row") as u16;
        let curl = text.lines().position(|l| l.contains(" curl ")).expect("curl row") as u16;
        assert!(buffer[(10, nc)].modifier.contains(Modifier::DIM), "nc exited (no flow active, no socket)");
        assert!(!buffer[(10, curl)].modifier.contains(Modifier::DIM));
    }

    #[test]
    fn help_and_hostile_names() {
        let mut app = App::new("fentry");
        let a = key(66, "10.0.0.1", 443);
        app.on_tick(&tick(1.0, &[(a, "x\x1b[2J\u{202e}y", 10, 10)], true));
        for view in ['1', '2', '3'] {
            press(&mut app, KeyCode::Char(view));
            let (text, _) = render(&mut app, COLOR, 80, 24);
            assert!(text.contains("x\\u{1b}[2J\\u{202e}y"), "{text}");
            assert!(!text.contains('\x1b') && !text.contains('\u{202e}'), "{text}");
        }
        press(&mut app, KeyCode::Char('?'));
        let (text, _) = render(&mut app, COLOR, 80, 24);
        assert!(text.contains("tracer top: keys") && text.contains("filter as you type"), "{text}");
    }

    #[test]
    fn larger_terminals_and_empty_views() {
        let mut app = App::new("fentry");
        let (text, _) = render(&mut app, COLOR, 80, 24);
        assert!(text.contains("no TCP traffic seen yet"), "{text}");
        let mut app = sample_app();
        press(&mut app, KeyCode::Char('4'));
        let (text, _) = render(&mut app, COLOR, 160, 50);
        assert!(text.contains("no socket in CLOSE_WAIT"), "{text}");
        // Tiny terminals do not panic.
        let _ = render(&mut app, COLOR, 20, 5);
        let _ = render(&mut app, COLOR, 1, 1);
    }
}
