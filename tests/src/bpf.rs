//! What the kernel holds for a tracer process, read from outside it:
//! the BPF programs and maps it owns (from `/proc/PID/fdinfo`, so other
//! tracers on the host are never confused with it) and what `bpftool`
//! (Debian's `bpftool` package, which `cargo xtask test` installs) says is
//! loaded host-wide.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
};

/// `bpftool`, from PATH or `/usr/sbin`; panics if it is not installed.
pub fn bpftool() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path).map(|dir| dir.join("bpftool")).find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/bpftool")).filter(|p| p.is_file())).unwrap_or_else(|| {
        panic!("a test tool is missing (bpftool): run the tests with `cargo xtask test`, which installs it")
    })
}

/// `bpftool -j ARGS`, parsed; panics with its stderr if it fails.
fn bpftool_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(bpftool()).arg("-j").args(args).output().expect("run bpftool");
    assert!(output.status.success(), "bpftool {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("bpftool {} printed no JSON ({e})", args.join(" ")))
}

/// `id -> name` of every entry `bpftool -j KIND show` lists (`prog`, `map`).
fn loaded(kind: &str) -> BTreeMap<u64, String> {
    let json = bpftool_json(&[kind, "show"]);
    json.as_array()
        .unwrap_or_else(|| panic!("bpftool {kind} show: not a list: {json}"))
        .iter()
        .filter_map(|entry| Some((entry["id"].as_u64()?, entry["name"].as_str().unwrap_or_default().to_owned())))
        .collect()
}

/// Programs loaded host-wide: id -> name.
pub fn loaded_programs() -> BTreeMap<u64, String> {
    loaded("prog")
}

/// Maps loaded host-wide: id -> name.
pub fn loaded_maps() -> BTreeMap<u64, String> {
    loaded("map")
}

/// The BPF objects a process holds open: programs (its program fds and
/// the programs of its links) and maps (its map fds and every map those
/// programs use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    pub programs: BTreeMap<u64, String>,
    pub maps: BTreeMap<u64, String>,
}

/// The programs and maps process `pid` holds, by id, named as `bpftool`
/// names them.
pub fn owned_by(pid: u32) -> Owned {
    let mut program_ids = BTreeSet::new();
    let mut map_ids = BTreeSet::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"));
    for fd in fds.filter_map(Result::ok) {
        let Ok(target) = std::fs::read_link(fd.path()) else { continue };
        if !target.to_string_lossy().starts_with("anon_inode:bpf") {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy()))
        else {
            continue;
        };
        for line in info.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let Ok(id) = value.trim().parse::<u64>() else { continue };
            match key {
                "prog_id" => program_ids.insert(id),
                "map_id" => map_ids.insert(id),
                _ => false,
            };
        }
    }
    let programs = loaded_programs();
    let maps = loaded_maps();
    for id in &program_ids {
        let json = bpftool_json(&["prog", "show", "id", &id.to_string()]);
        map_ids.extend(json["map_ids"].as_array().into_iter().flatten().filter_map(serde_json::Value::as_u64));
    }
    let name = |table: &BTreeMap<u64, String>, id: &u64| (*id, table.get(id).cloned().unwrap_or_default());
    Owned {
        programs: program_ids.iter().map(|id| name(&programs, id)).collect(),
        maps: map_ids.iter().map(|id| name(&maps, id)).collect(),
    }
}

impl Owned {
    /// The id of the map named `name`; panics if there is not exactly one.
    pub fn map(&self, name: &str) -> u64 {
        let found: Vec<u64> = self.maps.iter().filter(|(_, n)| *n == name).map(|(id, _)| *id).collect();
        match found.as_slice() {
            [id] => *id,
            _ => panic!("expected one map named {name}, found {found:?} in {self:#?}"),
        }
    }

    /// Those of these programs and maps still loaded host-wide.
    pub fn still_loaded(&self) -> Owned {
        let programs = loaded_programs();
        let maps = loaded_maps();
        Owned {
            programs: self.programs.iter().filter(|(id, _)| programs.contains_key(id)).map(clone_entry).collect(),
            maps: self.maps.iter().filter(|(id, _)| maps.contains_key(id)).map(clone_entry).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.programs.is_empty() && self.maps.is_empty()
    }
}

fn clone_entry((id, name): (&u64, &String)) -> (u64, String) {
    (*id, name.clone())
}

/// Entry `index` of the per-CPU `u64` array `map_id`, summed over CPUs
/// (how the tracer reads its `STATS`).
pub fn percpu_u64_sum(map_id: u64, index: u32) -> u64 {
    let key: Vec<String> = index.to_le_bytes().iter().map(u8::to_string).collect();
    let mut args = vec!["map".to_owned(), "lookup".to_owned(), "id".to_owned(), map_id.to_string(), "key".to_owned()];
    args.extend(key);
    let json = bpftool_json(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let values = json["values"].as_array().unwrap_or_else(|| panic!("no per-CPU values in {json}"));
    values.iter().map(|cpu| u64_value(&cpu["value"]).unwrap_or_else(|| panic!("not a u64: {cpu}"))).sum()
}

/// A `u64` as `bpftool -j` prints a value: a number (with BTF) or its
/// bytes as `"0x.."` strings, little-endian.
fn u64_value(value: &serde_json::Value) -> Option<u64> {
    if let Some(number) = value.as_u64() {
        return Some(number);
    }
    let bytes = value.as_array()?;
    if bytes.len() != 8 {
        return None;
    }
    let mut raw = [0u8; 8];
    for (slot, byte) in raw.iter_mut().zip(bytes) {
        *slot = u8::from_str_radix(byte.as_str()?.trim_start_matches("0x"), 16).ok()?;
    }
    Some(u64::from_le_bytes(raw))
}
