//! The state of `tracer top` between frames and what each key does: the
//! view shown, its sort column and direction, the filter typed, the
//! selected row (it follows its row when the order changes), pause and
//! help. Pure: ticks and keys in, [`Screen`] out; no terminal.

use std::cmp::Ordering;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::{
    data::{Data, TickInput},
    rows::{rows, Row, SortValue, View},
};

/// What the loop does after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Continue,
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sort {
    column: usize,
    reversed: bool,
}

pub(crate) struct App {
    /// Kept current by every tick, paused or not.
    data: Data,
    /// What a pause froze on screen.
    frozen: Option<Data>,
    pub(crate) view: View,
    sorts: [Sort; 5],
    pub(crate) filter: String,
    /// Typing goes to the filter.
    pub(crate) editing: bool,
    pub(crate) help: bool,
    /// Per view: the selected row's key and its last position.
    selected: [(Option<String>, usize); 5],
    /// Rows that fit the table, set by the renderer (page up/down).
    pub(crate) page: usize,
    pub(crate) backend: &'static str,
}

/// One frame's worth of the state: the rows shown, in order.
pub(crate) struct Screen<'a> {
    pub(crate) data: &'a Data,
    pub(crate) rows: Vec<Row>,
    pub(crate) selected: Option<usize>,
    pub(crate) sort_column: usize,
    pub(crate) reversed: bool,
    pub(crate) paused: bool,
}

fn compare(a: &SortValue, b: &SortValue) -> Ordering {
    match (a, b) {
        // Largest first.
        (SortValue::Num(a), SortValue::Num(b)) => b.total_cmp(a),
        (SortValue::Text(a), SortValue::Text(b)) => a.cmp(b),
        (SortValue::Num(_), SortValue::Text(_)) => Ordering::Less,
        (SortValue::Text(_), SortValue::Num(_)) => Ordering::Greater,
    }
}

/// Rows matching `filter` (case-insensitive, on comm, remote and port),
/// ordered by `column`; ties keep a fixed order (by the row's key), so
/// rows do not swap places from one tick to the next.
fn arrange(mut rows: Vec<Row>, filter: &str, column: usize, reversed: bool) -> Vec<Row> {
    let filter = filter.to_lowercase();
    rows.retain(|row| filter.is_empty() || row.search.contains(&filter));
    rows.sort_by(|a, b| {
        let by_column = match (a.sort.get(column), b.sort.get(column)) {
            (Some(x), Some(y)) => compare(x, y),
            _ => Ordering::Equal,
        };
        let by_column = if reversed { by_column.reverse() } else { by_column };
        by_column.then_with(|| a.key.cmp(&b.key))
    });
    rows
}

impl App {
    pub(crate) fn new(backend: &'static str) -> Self {
        App {
            data: Data::default(),
            frozen: None,
            view: View::Processes,
            sorts: View::ALL.map(|view| Sort { column: view.default_sort(), reversed: false }),
            filter: String::new(),
            editing: false,
            help: false,
            selected: Default::default(),
            page: 10,
            backend,
        }
    }

    pub(crate) fn on_tick(&mut self, tick: &TickInput) {
        self.data.apply(tick);
    }

    /// The rows of the current view as they are shown, with the selection.
    pub(crate) fn screen(&mut self) -> Screen<'_> {
        let index = self.view.index();
        let sort = self.sorts[index];
        let data = self.frozen.as_ref().unwrap_or(&self.data);
        let rows = arrange(rows(data, self.view), &self.filter, sort.column, sort.reversed);
        let (key, position) = &mut self.selected[index];
        let selected = if rows.is_empty() {
            None
        } else {
            let found = key.as_ref().and_then(|k| rows.iter().position(|r| &r.key == k));
            let at = found.unwrap_or((*position).min(rows.len() - 1));
            *key = Some(rows[at].key.clone());
            *position = at;
            Some(at)
        };
        Screen {
            data,
            rows,
            selected,
            sort_column: sort.column,
            reversed: sort.reversed,
            paused: self.frozen.is_some(),
        }
    }

    /// Moves the selection by `delta` rows (clamped).
    fn select_by(&mut self, delta: isize) {
        let screen = self.screen();
        let len = screen.rows.len();
        let Some(current) = screen.selected else { return };
        let target = current.saturating_add_signed(delta).min(len.saturating_sub(1));
        let key = screen.rows.get(target).map(|r| r.key.clone());
        self.selected[self.view.index()] = (key, target);
    }

    fn set_view(&mut self, view: View) {
        self.view = view;
    }

    fn step_view(&mut self, forward: bool) {
        let count = View::ALL.len();
        let index = self.view.index();
        let next = if forward { (index + 1) % count } else { (index + count - 1) % count };
        self.set_view(View::ALL[next]);
    }

    fn step_sort(&mut self, forward: bool) {
        let columns = self.view.columns().len();
        let sort = &mut self.sorts[self.view.index()];
        sort.column = if forward { (sort.column + 1) % columns } else { (sort.column + columns - 1) % columns };
        sort.reversed = false;
    }

    pub(crate) fn on_key(&mut self, key: KeyEvent) -> Control {
        if key.kind == KeyEventKind::Release {
            return Control::Continue;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && matches!(key.code, KeyCode::Char('c' | 'd')) {
            return Control::Quit;
        }
        if self.editing {
            match key.code {
                KeyCode::Enter => self.editing = false,
                KeyCode::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) if !c.is_control() && self.filter.chars().count() < 64 => self.filter.push(c),
                KeyCode::Up => self.select_by(-1),
                KeyCode::Down => self.select_by(1),
                _ => {}
            }
            return Control::Continue;
        }
        if self.help {
            // Any key closes the help; `q` still quits.
            self.help = false;
            return if key.code == KeyCode::Char('q') { Control::Quit } else { Control::Continue };
        }
        match key.code {
            KeyCode::Char('q') => return Control::Quit,
            KeyCode::Char('?') | KeyCode::F(1) => self.help = true,
            KeyCode::Tab | KeyCode::Right => self.step_view(true),
            KeyCode::BackTab | KeyCode::Left => self.step_view(false),
            KeyCode::Char(c @ '1'..='5') => {
                let index = usize::from(c as u8 - b'1');
                self.set_view(View::ALL[index]);
            }
            KeyCode::Up | KeyCode::Char('k') => self.select_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.select_by(1),
            KeyCode::PageUp => self.select_by(-(self.page.max(1) as isize)),
            KeyCode::PageDown => self.select_by(self.page.max(1) as isize),
            KeyCode::Home | KeyCode::Char('g') => self.select_by(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.select_by(isize::MAX / 2),
            KeyCode::Char('s') => self.step_sort(true),
            KeyCode::Char('S') => self.step_sort(false),
            KeyCode::Char('r') => {
                let sort = &mut self.sorts[self.view.index()];
                sort.reversed = !sort.reversed;
            }
            KeyCode::Char('/') => self.editing = true,
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Char('p' | ' ') => {
                self.frozen = match self.frozen.take() {
                    Some(_) => None,
                    None => Some(self.data.clone()),
                };
            }
            _ => {}
        }
        Control::Continue
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cmd::top::data::tests::{key, tick};

    pub(crate) fn press(app: &mut App, code: KeyCode) -> Control {
        app.on_key(KeyEvent::new(code, KeyModifiers::NONE))
    }

    pub(crate) fn type_text(app: &mut App, text: &str) {
        for c in text.chars() {
            press(app, KeyCode::Char(c));
        }
    }

    /// Three processes: curl (big), wget (small), nc (idle, then gone).
    pub(crate) fn sample_app() -> App {
        let mut app = App::new("fentry");
        let curl = key(10, "10.0.0.1", 443);
        let wget = key(11, "10.0.0.2", 80);
        let nc = key(12, "192.168.1.9", 5432);
        app.on_tick(&tick(1.0, &[(curl, "curl", 5000, 100), (wget, "wget", 700, 10), (nc, "nc", 1, 1)], true));
        app.on_tick(&tick(2.0, &[(curl, "curl", 5000, 100), (wget, "wget", 700, 10)], true));
        app
    }

    fn comms(app: &mut App) -> Vec<String> {
        let view = app.view;
        let column = view.columns().iter().position(|c| c.header == "COMM").expect("a COMM column");
        app.screen().rows.iter().map(|r| r.cells[column].clone()).collect()
    }

    #[test]
    fn sorts_by_the_chosen_column_and_reverses() {
        let mut app = sample_app();
        // Default: IN/s, largest first; nc moved nothing in the last interval.
        assert_eq!(comms(&mut app), ["curl", "wget", "nc"]);
        press(&mut app, KeyCode::Char('r'));
        assert_eq!(comms(&mut app), ["nc", "wget", "curl"]);
        // s: OUT/s, then S back, S again: COMM (A-Z).
        press(&mut app, KeyCode::Char('s'));
        press(&mut app, KeyCode::Char('S'));
        press(&mut app, KeyCode::Char('S'));
        assert_eq!(comms(&mut app), ["curl", "nc", "wget"]);
        assert_eq!(app.screen().sort_column, 1);
    }

    #[test]
    fn ties_keep_a_fixed_order() {
        let mut app = App::new("fentry");
        let moved: Vec<_> = (0..20u32).map(|i| (key(100 + i, "10.0.0.1", 443), "same", 10, 10)).collect();
        app.on_tick(&tick(1.0, &moved, true));
        let first: Vec<String> = app.screen().rows.iter().map(|r| r.key.clone()).collect();
        app.on_tick(&tick(2.0, &moved, true));
        let second: Vec<String> = app.screen().rows.iter().map(|r| r.key.clone()).collect();
        assert_eq!(first, second);
    }

    #[test]
    fn filter_as_you_type_on_comm_remote_and_port() {
        let mut app = sample_app();
        press(&mut app, KeyCode::Char('/'));
        type_text(&mut app, "WG");
        assert_eq!(comms(&mut app), ["wget"]);
        press(&mut app, KeyCode::Backspace);
        press(&mut app, KeyCode::Backspace);
        type_text(&mut app, "5432");
        assert_eq!(comms(&mut app), ["nc"], "a process matches its flows' ports");
        press(&mut app, KeyCode::Enter);
        press(&mut app, KeyCode::Char('2'));
        assert_eq!(app.view, View::Flows);
        assert_eq!(comms(&mut app), ["nc"]);
        app.filter = "10.0.0.".into();
        assert_eq!(comms(&mut app), ["curl", "wget"]);
        press(&mut app, KeyCode::Esc);
        assert_eq!(comms(&mut app).len(), 3);
        // While typing, q is text, not quit.
        press(&mut app, KeyCode::Char('/'));
        assert_eq!(press(&mut app, KeyCode::Char('q')), Control::Continue);
        assert_eq!(app.filter, "q");
    }

    #[test]
    fn selection_follows_its_row() {
        let mut app = sample_app();
        press(&mut app, KeyCode::Down);
        assert_eq!(app.screen().selected, Some(1));
        // Reversed, wget is still selected, now elsewhere.
        press(&mut app, KeyCode::Char('r'));
        let screen = app.screen();
        let at = screen.selected.expect("selected");
        assert_eq!(screen.rows[at].cells[1], "wget");
        press(&mut app, KeyCode::End);
        assert_eq!(app.screen().selected, Some(2));
        press(&mut app, KeyCode::Home);
        assert_eq!(app.screen().selected, Some(0));
    }

    #[test]
    fn pause_freezes_the_screen_but_not_the_totals() {
        let mut app = sample_app();
        let a = key(10, "10.0.0.1", 443);
        press(&mut app, KeyCode::Char('p'));
        app.on_tick(&tick(3.0, &[(a, "curl", 1, 0)], true));
        assert!(app.screen().paused);
        assert!(app.screen().rows[0].detail.lines[1].starts_with("in 10000 B"));
        press(&mut app, KeyCode::Char('p'));
        assert!(app.screen().rows.iter().any(|r| r.detail.lines[1].starts_with("in 10001 B")));
    }

    #[test]
    fn keys_switch_views_help_and_quit() {
        let mut app = sample_app();
        press(&mut app, KeyCode::Tab);
        assert_eq!(app.view, View::Flows);
        press(&mut app, KeyCode::BackTab);
        press(&mut app, KeyCode::BackTab);
        assert_eq!(app.view, View::Findings);
        press(&mut app, KeyCode::Char('?'));
        assert!(app.help);
        press(&mut app, KeyCode::Char('x'));
        assert!(!app.help);
        assert_eq!(app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)), Control::Quit);
        assert_eq!(press(&mut app, KeyCode::Char('q')), Control::Quit);
    }
}
