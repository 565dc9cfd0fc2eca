//! A structure-only pass over any pickle (protocols 0–5): how many values unpickling would build
//! or copy and how deep they would nest, counted without building anything. Readers we do not
//! own (candle's, for the `data.pkl` of a PyTorch zip) copy memoised values whole and recurse
//! over nesting, so a 400-byte pickle of repeated memo gets asks for 2^64 values and a million
//! nested lists overflow the stack; this pass refuses both first, with our own reader's bounds
//! ([`MAX_NODES`], [`MAX_DEPTH`]).

use std::collections::HashMap;

use super::pickle::{PickleError, MAX_DEPTH, MAX_NODES};

type R<T> = std::result::Result<T, PickleError>;

fn err<T>(msg: impl Into<String>) -> R<T> {
    Err(PickleError(msg.into()))
}

/// What a value would cost: nodes (saturating) and nesting depth.
#[derive(Debug, Clone, Copy)]
struct Cost {
    nodes: u64,
    depth: usize,
}

const LEAF: Cost = Cost { nodes: 1, depth: 1 };

struct Scan<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Cost>,
    marks: Vec<usize>,
    memo: HashMap<u64, Cost>,
    spent: u64,
}

impl Scan<'_> {
    fn take(&mut self, n: u64) -> R<&[u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return err(format!(
                "truncated at byte {}: {n} bytes announced, {left} left",
                self.pos
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.data[start..self.pos])
    }
    fn uint(&mut self, n: u64) -> R<u64> {
        let b = self.take(n)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }
    /// Skips an `n`-byte argument and pushes the leaf it makes.
    fn leaf_after(&mut self, n: u64) -> R<()> {
        self.take(n)?;
        self.stack.push(LEAF);
        Ok(())
    }
    /// The memo slot argument of a GET/PUT opcode: 1 byte (`h`, `q`), 4 bytes (`j`, `r`) or a
    /// decimal line (`g`, `p`).
    fn memo_key(&mut self, op: u8) -> R<u64> {
        match op {
            b'h' | b'q' => self.uint(1),
            b'j' | b'r' => self.uint(4),
            _ => {
                let k = self.line()?;
                k.trim()
                    .parse()
                    .map_err(|_| PickleError(format!("memo slot `{k}` is not a number")))
            }
        }
    }
    /// A newline-terminated argument (text opcodes).
    fn line(&mut self) -> R<String> {
        let rest = &self.data[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return err(format!("unterminated line at byte {}", self.pos));
        };
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }
    fn charge(&mut self, nodes: u64) -> R<()> {
        self.spent = self.spent.saturating_add(nodes);
        if self.spent > MAX_NODES as u64 {
            return err(format!(
                "more than {MAX_NODES} values built or copied (a memo bomb?)"
            ));
        }
        Ok(())
    }
    fn pop(&mut self) -> R<Cost> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return err("stack underflow (below a mark)");
        }
        self.stack
            .pop()
            .ok_or_else(|| PickleError("stack underflow".into()))
    }
    fn pop_mark(&mut self) -> R<Vec<Cost>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| PickleError("no mark to pop to".into()))?;
        if mark > self.stack.len() {
            return err("mark above the stack");
        }
        Ok(self.stack.split_off(mark))
    }
    fn top(&mut self) -> R<&mut Cost> {
        self.stack
            .last_mut()
            .ok_or_else(|| PickleError("empty stack".into()))
    }
    /// `items` added to the container on top of the stack.
    fn extend_top(&mut self, items: &[Cost]) -> R<()> {
        let top = self.top()?;
        for c in items {
            top.nodes = top.nodes.saturating_add(c.nodes);
            top.depth = top.depth.max(c.depth + 1);
        }
        let depth = top.depth;
        check_depth(depth)
    }
    /// A new value built of `items` (a tuple, a reduce, an object).
    fn push_built(&mut self, items: &[Cost]) -> R<()> {
        let mut built = LEAF;
        for c in items {
            built.nodes = built.nodes.saturating_add(c.nodes);
            built.depth = built.depth.max(c.depth + 1);
        }
        check_depth(built.depth)?;
        self.stack.push(built);
        Ok(())
    }
    fn get(&mut self, key: u64) -> R<()> {
        let c = *self
            .memo
            .get(&key)
            .ok_or_else(|| PickleError(format!("memo slot {key} read before it was written")))?;
        self.charge(c.nodes)?;
        self.stack.push(c);
        Ok(())
    }
    fn put(&mut self, key: u64) -> R<()> {
        let c = *self.top()?;
        self.charge(c.nodes)?;
        self.memo.insert(key, c);
        Ok(())
    }
}

fn check_depth(depth: usize) -> R<()> {
    if depth > MAX_DEPTH {
        return err(format!("containers nested deeper than {MAX_DEPTH}"));
    }
    Ok(())
}

/// Walks `data` to its STOP opcode, refusing it once the values it would build or copy pass
/// [`MAX_NODES`] or nest deeper than [`MAX_DEPTH`], and on a malformed opcode stream.
pub fn check_bounds(data: &[u8]) -> R<()> {
    let mut s = Scan {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        spent: 0,
    };
    while s.pos < data.len() {
        let op = data[s.pos];
        s.pos += 1;
        s.charge(1)?;
        match op {
            b'.' => return Ok(()),
            0x80 => drop(s.take(1)?),            // PROTO
            0x95 => drop(s.take(8)?),            // FRAME
            0x98 => {}                           // READONLY_BUFFER
            b'(' => s.marks.push(s.stack.len()), // MARK
            b'0' => drop(s.pop()?),              // POP
            b'1' => drop(s.pop_mark()?),         // POP_MARK
            b'2' => {
                // DUP
                let c = *s.top()?;
                s.charge(c.nodes)?;
                s.stack.push(c);
            }
            // Leaves with a fixed-size or no argument.
            b'N' | 0x88 | 0x89 | b'}' | b']' | b')' | 0x8f | 0x97 => s.stack.push(LEAF),
            b'K' | 0x82 => s.leaf_after(1)?,
            b'M' | 0x83 => s.leaf_after(2)?,
            b'J' | 0x84 => s.leaf_after(4)?,
            b'G' => s.leaf_after(8)?,
            // Leaves with a length-prefixed argument (1, 4 or 8 length bytes).
            0x8a | b'U' | 0x8c | b'C' => {
                let n = s.uint(1)?;
                s.leaf_after(n)?;
                s.charge(n)?
            }
            0x8b | b'T' | b'X' | b'B' => {
                let n = s.uint(4)?;
                s.leaf_after(n)?;
                s.charge(n)?
            }
            0x8d | 0x8e | 0x96 => {
                let n = s.uint(8)?;
                s.leaf_after(n)?;
                s.charge(n)?
            }
            // Text-protocol leaves: INT, LONG, FLOAT, STRING, UNICODE, PERSID.
            b'I' | b'L' | b'F' | b'S' | b'V' | b'P' => {
                s.line()?;
                s.stack.push(LEAF)
            }
            b'c' => {
                // GLOBAL: module and name lines.
                s.line()?;
                s.line()?;
                s.stack.push(LEAF);
            }
            0x93 => {
                // STACK_GLOBAL
                s.pop()?;
                s.pop()?;
                s.stack.push(LEAF);
            }
            b'a' => {
                let item = s.pop()?;
                s.extend_top(&[item])?;
            }
            b's' => {
                let (v, k) = (s.pop()?, s.pop()?);
                s.extend_top(&[k, v])?;
            }
            b'b' => {
                // BUILD: the state goes into the object.
                let state = s.pop()?;
                s.extend_top(&[state])?;
            }
            b'e' | b'u' | 0x90 => {
                let items = s.pop_mark()?;
                s.extend_top(&items)?;
            }
            b't' | 0x91 | b'o' => {
                let items = s.pop_mark()?;
                s.push_built(&items)?;
            }
            b'i' => {
                // INST: module and name lines, arguments since the mark.
                s.line()?;
                s.line()?;
                let items = s.pop_mark()?;
                s.push_built(&items)?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(s.pop()?);
                }
                s.push_built(&items)?;
            }
            b'R' | 0x81 => {
                // REDUCE / NEWOBJ: callable (class) and arguments.
                let items = [s.pop()?, s.pop()?];
                s.push_built(&items)?;
            }
            0x92 => {
                // NEWOBJ_EX: class, args, kwargs.
                let items = [s.pop()?, s.pop()?, s.pop()?];
                s.push_built(&items)?;
            }
            b'Q' => {
                // BINPERSID: the persistent id becomes an object.
                let pid = s.pop()?;
                s.push_built(&[pid])?;
            }
            b'h' | b'j' | b'g' => {
                let k = s.memo_key(op)?;
                s.get(k)?
            }
            b'q' | b'r' | b'p' => {
                let k = s.memo_key(op)?;
                s.put(k)?
            }
            0x94 => {
                // MEMOIZE: the next free slot.
                let k = s.memo.len() as u64;
                s.put(k)?
            }
            other => {
                return err(format!(
                    "unknown opcode 0x{other:02x} at byte {}",
                    s.pos - 1
                ))
            }
        }
    }
    err("no STOP opcode: the pickle is truncated")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_pickles_pass_and_bombs_do_not() {
        // {"a": [1, 2.5], "b": (None, True)} with memo puts and a get.
        let mut ok = vec![
            0x80, 2, b'}', b'q', 0, b'(', b'X', 1, 0, 0, 0, b'a', b']', b'q', 1,
        ];
        ok.extend_from_slice(&[b'(', b'K', 1, b'G']);
        ok.extend_from_slice(&2.5f64.to_be_bytes());
        ok.extend_from_slice(&[
            b'e', b'X', 1, 0, 0, 0, b'b', b'N', 0x88, 0x86, b'u', b'h', 1,
        ]);
        ok.extend_from_slice(b"0.");
        check_bounds(&ok).unwrap();

        let mut memo_bomb = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..64 {
            memo_bomb.extend_from_slice(&[b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        memo_bomb.push(b'.');
        let e = check_bounds(&memo_bomb).unwrap_err().to_string();
        assert!(e.contains("memo bomb"), "{e}");

        let mut deep = vec![0x80, 2];
        deep.resize(2 + 1000, b']');
        deep.resize(2 + 1000 + 999, b'a');
        deep.push(b'.');
        let e = check_bounds(&deep).unwrap_err().to_string();
        assert!(e.contains("nested deeper"), "{e}");

        let e = check_bounds(&[0x80, 2, b'X', 0xff, 0xff, 0xff, 0x7f]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(check_bounds(&[0x80, 2, b'N']).is_err(), "no STOP");
    }
}
