//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): enough to
//! find structs and functions by name and the byte offset of a (possibly
//! nested, possibly anonymous) member. Rust eBPF has no CO-RE, so user space
//! resolves the offsets the programs need here and passes them as globals.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub(crate) enum BtfError {
    #[error("cannot read BTF from {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("struct {0} not found in the kernel's BTF")]
    NoStruct(String),
    #[error("member {member} of struct {strukt} not found in the kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("member {member} of struct {strukt} is a bitfield")]
    Bitfield { strukt: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    /// Referenced type for pointers, typedefs, qualifiers, funcs and vars.
    type_ref: u32,
    members: Vec<Member>,
    /// Parameter (name, type) pairs of a FUNC_PROTO.
    params: Vec<(u32, u32)>,
}

/// Parsed BTF: types (index = type id) and the string section.
pub(crate) struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    /// Reads the BTF of the running kernel (or any raw BTF file).
    pub(crate) fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.display().to_string(), source })?;
        Self::parse(&data)
    }

    /// Parses raw little-endian BTF.
    pub(crate) fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed("bad magic (big-endian BTF is not supported)"));
        }
        let header_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_section = data
            .get(header_len + type_off..header_len + type_off + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(header_len + str_off..header_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();

        // Type id 0 is `void`.
        let mut types = vec![Type { name: 0, kind: 0, type_ref: 0, members: Vec::new(), params: Vec::new() }];
        let mut at = 0;
        while at < types_section.len() {
            let name = u32_at(types_section, at)?;
            let info = u32_at(types_section, at + 4)?;
            let size_or_type = u32_at(types_section, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut ty = Type { name, kind, type_ref: size_or_type, members: Vec::new(), params: Vec::new() };
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let offset = u32_at(types_section, at + 8)?;
                        let (bit_offset, bitfield_size) =
                            if kind_flag { (offset & 0xff_ffff, offset >> 24) } else { (offset, 0) };
                        ty.members.push(Member {
                            name: u32_at(types_section, at)?,
                            type_id: u32_at(types_section, at + 4)?,
                            bit_offset,
                            bitfield_size,
                        });
                        at += 12;
                    }
                }
                KIND_ENUM => at += 8 * vlen,
                KIND_FUNC_PROTO => {
                    for _ in 0..vlen {
                        ty.params.push((u32_at(types_section, at)?, u32_at(types_section, at + 4)?));
                        at += 8;
                    }
                }
                KIND_DATASEC | KIND_ENUM64 => at += 12 * vlen,
                _ => {}
            }
            types.push(ty);
        }

        let mut btf = Btf { types, strings, by_name: HashMap::new() };
        for id in 1..btf.types.len() {
            let name = btf.name(btf.types[id].name);
            if !name.is_empty() {
                btf.by_name.entry(name.to_owned()).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, offset: u32) -> &str {
        let start = offset as usize;
        let Some(rest) = self.strings.get(start..) else { return "" };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn find_kind(&self, name: &str, kinds: &[u32]) -> Option<u32> {
        self.by_name.get(name)?.iter().copied().find(|&id| kinds.contains(&self.types[id as usize].kind))
    }

    /// Skips typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize).map(|t| t.kind) {
                Some(KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = self.types[id as usize].type_ref;
                }
                _ => break,
            }
        }
        id
    }

    /// Whether a function of this name exists (e.g. a traceable kernel
    /// function, or `btf_trace_<tracepoint>` for a BTF tracepoint).
    pub(crate) fn has_type(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Byte offset of `member` in struct `strukt`, looking through anonymous
    /// structs and unions.
    pub(crate) fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id =
            self.find_kind(strukt, &[KIND_STRUCT, KIND_UNION]).ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let (bits, bitfield) = self
            .find_member(id, member, 0)
            .ok_or_else(|| BtfError::NoMember { strukt: strukt.to_owned(), member: member.to_owned() })?;
        if bitfield != 0 || bits % 8 != 0 {
            return Err(BtfError::Bitfield { strukt: strukt.to_owned(), member: member.to_owned() });
        }
        Ok(bits / 8)
    }

    /// Bit offset and bitfield width (0 for a whole member) of `member` in
    /// struct `strukt`, looking through anonymous structs and unions.
    pub fn member_bits(&self, strukt: &str, member: &str) -> Result<(u32, u32), BtfError> {
        let id =
            self.find_kind(strukt, &[KIND_STRUCT, KIND_UNION]).ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        self.find_member(id, member, 0)
            .ok_or_else(|| BtfError::NoMember { strukt: strukt.to_owned(), member: member.to_owned() })
    }

    fn find_member(&self, id: u32, member: &str, depth: u32) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        let ty = self.types.get(id as usize)?;
        for m in &ty.members {
            let name = self.name(m.name);
            if name == member {
                return Some((m.bit_offset, m.bitfield_size));
            }
            if name.is_empty() {
                let inner = self.resolve(m.type_id);
                if let Some((bits, size)) = self.find_member(inner, member, depth + 1) {
                    return Some((m.bit_offset + bits, size));
                }
            }
        }
        None
    }

    /// Parameter names of a kernel function, in order.
    pub(crate) fn function_params(&self, function: &str) -> Option<Vec<String>> {
        let func = self.find_kind(function, &[KIND_FUNC])?;
        let proto = self.types.get(self.types[func as usize].type_ref as usize)?;
        if proto.kind != KIND_FUNC_PROTO {
            return None;
        }
        Some(proto.params.iter().map(|&(name, _)| self.name(name).to_owned()).collect())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a raw BTF blob from (name, info, size_or_type, extra words).
    pub(crate) fn blob(strings: &[&str], types: &[(u32, u32, u32, Vec<u32>)]) -> (Vec<u8>, Vec<u32>) {
        let mut string_section = vec![0u8];
        let mut offsets = Vec::new();
        for s in strings {
            offsets.push(string_section.len() as u32);
            string_section.extend_from_slice(s.as_bytes());
            string_section.push(0);
        }
        let mut type_section = Vec::new();
        for (name, info, size, extra) in types {
            for word in [*name, *info, *size].iter().chain(extra.iter()) {
                type_section.extend_from_slice(&word.to_le_bytes());
            }
        }
        let mut data = vec![0x9f, 0xeb, 1, 0];
        for word in [24u32, 0, type_section.len() as u32, type_section.len() as u32, string_section.len() as u32] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(&type_section);
        data.extend_from_slice(&string_section);
        (data, offsets)
    }

    #[test]
    fn finds_nested_anonymous_members_and_rejects_bitfields() {
        // 1: int; 2: anon struct { u16 dport @0; u16 num @16 }; 3: struct sock_common { u32 daddr @0; anon @32 };
        // 4: struct flagged (kind_flag) { bits:4 @ 8 }
        let names = ["int", "skc_dport", "skc_num", "sock_common", "skc_daddr", "flagged", "bits"];
        let (_, o) = blob(&names, &[]);
        let (data, _) = blob(
            &names,
            &[
                (o[0], KIND_INT << 24, 4, vec![32]),
                (0, (KIND_STRUCT << 24) | 2, 4, vec![o[1], 1, 0, o[2], 1, 16]),
                (o[3], (KIND_STRUCT << 24) | 2, 8, vec![o[4], 1, 0, 0, 2, 32]),
                (o[5], (1 << 31) | (KIND_STRUCT << 24) | 1, 4, vec![o[6], 1, (4 << 24) | 8]),
            ],
        );
        let btf = Btf::parse(&data).expect("parses");
        assert_eq!(btf.member_offset("sock_common", "skc_daddr").expect("daddr"), 0);
        assert_eq!(btf.member_offset("sock_common", "skc_dport").expect("dport"), 4);
        assert_eq!(btf.member_offset("sock_common", "skc_num").expect("num"), 6);
        assert!(matches!(btf.member_offset("sock_common", "nope"), Err(BtfError::NoMember { .. })));
        assert!(matches!(btf.member_offset("nope", "x"), Err(BtfError::NoStruct(_))));
        assert!(matches!(btf.member_offset("flagged", "bits"), Err(BtfError::Bitfield { .. })));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, not btf at all").is_err());
        assert!(Btf::parse(&[]).is_err());
    }
}
