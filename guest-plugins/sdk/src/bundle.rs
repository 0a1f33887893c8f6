//! Running plugins as members of a built-in bundle (`wit/builtin-bundle.wit`): internal to
//! wasmgate's own built-ins, not part of the SDK's contract.
//!
//! While a member runs, the SDK's [`crate::request`] and [`crate::metrics`] functions answer
//! from the packed request head the host passed and record what the member changes, instead
//! of calling the host; [`run`] hands each member's changes and action to the host through the
//! bundle's `commit` import. Every other import is called as usual.
//!
//! The packed formats (little-endian; `str` = u32 length, then UTF-8 bytes), mirrored by the
//! host (`crates/plugin-host/src/bundle/codec.rs`):
//!
//! - head: `str method, str path, u8 has_query [str query], u8 ip (0 none, 4, 6) [4 or 16
//!   bytes], str route, str request_id, u32 n {str name, str value}` (every request header
//!   value in the host's order; a value the host would not show a plugin, one that is not
//!   visible ASCII, has length `u32::MAX` and no bytes) `, u32 n {str key, str value}`
//!   (properties) `, u8 has_upstream [u32 n {str address, u8 healthy, u32 in_flight, u8
//!   has_region [str region], u32 n {str worker}}]` (the route's targets, as the `upstream`
//!   import reports them);
//! - effects: a sequence of ops, the action last — see [`op`].
use std::cell::RefCell;
use std::net::IpAddr;

use crate::bindings::wasmgate::plugin::types::PluginInfo;
use crate::upstream::{TargetRef, Workers};
use crate::{Action, Config, Header, Info, LocalResponse, Plugin, QueueMode};

/// The op codes of the effects a member commits.
pub mod op {
    /// `str name, str value`: set a request header (replacing).
    pub const SET_HEADER: u8 = 1;
    /// `str name`: remove a request header.
    pub const REMOVE_HEADER: u8 = 2;
    /// `str key, str value`: set a request property.
    pub const SET_PROPERTY: u8 = 3;
    /// `u8 mode (0 replace, 1 keep-existing, 2 append), str name, str value`: queue a response
    /// header.
    pub const QUEUE_RESPONSE_HEADER: u8 = 4;
    /// The member does not need this response's body.
    pub const SKIP_RESPONSE_BODY: u8 = 5;
    /// `str name, u64 value`: add to one of the member's counters.
    pub const COUNTER_ADD: u8 = 6;
    /// `str name, f64 value`: record in one of the member's histograms.
    pub const HISTOGRAM_OBSERVE: u8 = 7;
    /// The action: go on.
    pub const CONTINUE: u8 = 16;
    /// The action: go on to `str target`.
    pub const CONTINUE_TO: u8 = 17;
    /// The action: answer with `u16 status, u32 n {str name, str value}, u32 len, body`.
    pub const RESPOND: u8 = 18;
}

/// A plugin as a bundle member: what the bundle needs of it.
pub trait Member {
    /// Name, version, phases and capabilities.
    fn info(&self) -> Info;
    /// The request head arrived.
    fn on_request_headers(&mut self) -> Action;
}

impl<P: Plugin> Member for P {
    fn info(&self) -> Info {
        Plugin::info(self)
    }
    fn on_request_headers(&mut self) -> Action {
        Plugin::on_request_headers(self)
    }
}

/// Builds a bundle's member by name from its configuration.
pub type MakeMember = fn(&str, Config) -> Result<Box<dyn Member>, String>;

/// Builds member `P` from its configuration.
pub fn member<P: Plugin>(config: Config) -> Result<Box<dyn Member>, String> {
    Ok(Box::new(P::new(config)?))
}

thread_local! {
    static MEMBERS: RefCell<Vec<Box<dyn Member>>> = const { RefCell::new(Vec::new()) };
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// Sets up the members (`(plugin, config)` in chain order) with `make`, and returns what each
/// is. An error names the member.
pub fn init_members(
    members: impl IntoIterator<Item = (String, String)>,
    make: MakeMember,
) -> Result<Vec<PluginInfo>, String> {
    let mut built = Vec::new();
    let mut infos = Vec::new();
    for (plugin, config) in members {
        let m = make(&plugin, Config(config)).map_err(|e| format!("{plugin}: {e}"))?;
        infos.push(m.info().into_wit());
        built.push(m);
    }
    MEMBERS.with(|m| *m.borrow_mut() = built);
    Ok(infos)
}

/// Runs `on-request-headers` of the members in `run` (bit i = member i) against `head`, each
/// followed by `commit(member, effects)`, until a member answers or `commit` returns false.
pub fn run(run: u64, head: Vec<u8>, commit: fn(u32, &[u8]) -> bool) {
    LOCAL.with(|l| {
        if !l.borrow_mut().start(head) {
            panic!("wasmgate passed a malformed request head");
        }
    });
    MEMBERS.with(|members| {
        let mut members = members.borrow_mut();
        for (i, m) in members.iter_mut().enumerate() {
            if i >= 64 || run & (1 << i) == 0 {
                continue;
            }
            let action = m.on_request_headers();
            let answered = matches!(action, Action::Respond(_));
            let go_on = LOCAL.with(|l| {
                l.borrow_mut().push_action(&action);
                let go_on = commit(i as u32, &l.borrow().effects);
                l.borrow_mut().effects.clear();
                go_on
            });
            if !go_on || answered {
                break;
            }
        }
    });
    LOCAL.with(|l| l.borrow_mut().active = false);
}

/// Runs `f` on the local request when a bundle member is running.
pub(crate) fn with_local<R>(f: impl FnOnce(&mut Local) -> R) -> Option<R> {
    LOCAL.with(|l| {
        let mut l = l.borrow_mut();
        l.active.then(|| f(&mut l))
    })
}

thread_local! {
    /// The buffer [`with_text`] copies a header value or property into, reused from call to
    /// call.
    static SCRATCH: std::cell::Cell<String> = const { std::cell::Cell::new(String::new()) };
}

/// What [`with_text`] looks up in the local request.
pub(crate) enum Lookup<'n> {
    /// A request header's value (the first when repeated; none when not readable).
    Header(&'n str),
    /// A request property.
    Property(&'n str),
}

/// Runs `f` on a header value or property of the request, when a bundle member is running:
/// copied into a buffer reused from call to call (no `String` per call), and the request state
/// released first, so `f` may call the other SDK functions. Gives `f` back otherwise.
pub(crate) fn with_text<R, F: FnOnce(Option<&str>) -> R>(what: Lookup<'_>, f: F) -> Result<R, F> {
    let mut buf = SCRATCH.take();
    buf.clear();
    let found = LOCAL.with(|l| {
        let l = l.borrow();
        if !l.active {
            return None;
        }
        let bytes = match what {
            Lookup::Header(name) => l.header_bytes(name),
            Lookup::Property(key) => l.property_bytes(key),
        };
        Some(bytes.map(|b| push_text(&mut buf, b)))
    });
    let r = match found {
        None => {
            SCRATCH.set(buf);
            return Err(f);
        }
        Some(found) => f(found.map(|()| buf.as_str())),
    };
    SCRATCH.set(buf);
    Ok(r)
}

thread_local! {
    /// The buffer [`with_targets`] copies the head's targets into, reused from call to call.
    static TARGETS: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on the route's targets read from the head, borrowed, when a bundle member is
/// running; gives `f` back otherwise. The targets are copied out of the request state first,
/// so that `f` may call the other SDK functions.
pub(crate) fn with_targets<R, F: FnOnce(&[TargetRef<'_>]) -> R>(f: F) -> Result<R, F> {
    let mut buf = TARGETS.take();
    buf.clear();
    if with_local(|l| l.copy_targets(&mut buf)).is_none() {
        TARGETS.set(buf);
        return Err(f);
    }
    let r = f(&decode_targets(&buf).unwrap_or_default());
    TARGETS.set(buf);
    Ok(r)
}

/// `u32 n {str address, u8 healthy, u32 in_flight, u8 has_region [str region], u32 n {str
/// worker}}`, borrowed; empty input is no targets.
fn decode_targets(buf: &[u8]) -> Option<Vec<TargetRef<'_>>> {
    if buf.is_empty() {
        return Some(Vec::new());
    }
    let mut r = Reader { buf, at: 0 };
    let text = |s: Span| text(slice(buf, s));
    let n = r.u32()?;
    let mut out = Vec::with_capacity(n.min(256) as usize);
    for _ in 0..n {
        let address = text(r.span()?)?;
        let healthy = r.u8()? != 0;
        let in_flight = r.u32()?;
        let region = match r.u8()? {
            0 => None,
            _ => Some(text(r.span()?)?),
        };
        let count = r.u32()?;
        let start = r.at;
        for _ in 0..count {
            text(r.span()?)?;
        }
        out.push(TargetRef {
            address,
            healthy,
            in_flight,
            region,
            workers: Workers::Packed(&buf[start..r.at], count),
        });
    }
    Some(out)
}

/// The workers of a packed target: `count` strings in `buf`, checked by [`decode_targets`].
pub(crate) fn packed_workers(buf: &[u8], count: u32) -> impl Iterator<Item = &str> + '_ {
    let mut r = Reader { buf, at: 0 };
    (0..count).map_while(move |_| text(slice(buf, r.span()?)))
}

/// A byte range, of the head or of the edits.
#[derive(Clone, Copy, Default)]
struct Span(u32, u32);

/// The request as a member sees it: the host's head plus what the run changed so far, and the
/// effects of the running member not yet committed. One per instance, its buffers reused from
/// run to run.
#[derive(Default)]
pub(crate) struct Local {
    /// A run is in progress.
    active: bool,
    head: Vec<u8>,
    method: Span,
    path: Span,
    query: Option<Span>,
    ip: Option<IpAddr>,
    route: Span,
    request_id: Span,
    /// Name, and value unless it is not visible ASCII (the host hides those).
    headers: Vec<(Span, Option<Span>)>,
    properties: Vec<(Span, Span)>,
    /// Where the route's targets start in the head (decoded when a member asks), if it has an
    /// upstream.
    targets: Option<usize>,
    /// The bytes of the run's edits.
    edits: Vec<u8>,
    /// Header edits in order (spans of `edits`): set to a value, or removed (`None`).
    header_edits: Vec<(Span, Option<Span>)>,
    /// Property edits in order (spans of `edits`).
    property_edits: Vec<(Span, Span)>,
    effects: Vec<u8>,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<usize> {
        let start = self.at;
        let end = start.checked_add(n).filter(|e| *e <= self.buf.len())?;
        self.at = end;
        Some(start)
    }
    fn u8(&mut self) -> Option<u8> {
        let at = self.take(1)?;
        Some(self.buf[at])
    }
    fn u32(&mut self) -> Option<u32> {
        let at = self.take(4)?;
        Some(u32::from_le_bytes(self.buf[at..at + 4].try_into().ok()?))
    }
    fn span(&mut self) -> Option<Span> {
        let len = self.u32()?;
        let at = self.take(len as usize)?;
        Some(Span(at as u32, len))
    }
    /// A span, or `None` for the marker of a value the host does not show (`u32::MAX`).
    fn value(&mut self) -> Option<Option<Span>> {
        let at = self.at;
        if self.u32()? == u32::MAX {
            return Some(None);
        }
        self.at = at;
        Some(Some(self.span()?))
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// What `HeaderName::from_bytes` accepts (RFC 9110 token characters).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| TOKEN[b as usize])
}

/// The RFC 9110 token characters, by byte: letters, digits and these.
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"!#$%&'*+-.^_`|~";
    let mut i = 0;
    while i < others.len() {
        t[others[i] as usize] = true;
        i += 1;
    }
    t
};

/// What `HeaderValue::from_str` accepts.
fn valid_value(value: &[u8]) -> bool {
    value.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t')
}

/// What the host returns for a header value it holds (`HeaderValue::to_str`: visible ASCII).
fn readable(value: &[u8]) -> bool {
    value.iter().all(|&b| (32..127).contains(&b) || b == b'\t')
}

fn slice(buf: &[u8], s: Span) -> &[u8] {
    &buf[s.0 as usize..(s.0 + s.1) as usize]
}

/// `bytes` of the head as text. The host writes them from `&str`, and header values only when
/// visible ASCII, so they are nearly always ASCII: checked as that first, which in wasm costs
/// a few instructions per word instead of `from_utf8`'s dozen per byte (a request reads a
/// dozen such strings).
#[allow(unsafe_code)]
fn text(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// Appends `bytes` of the head to `out` as text. The head's strings are the host's (UTF-8, and
/// header values visible ASCII): anything else is replaced, never refused.
fn push_text(out: &mut String, bytes: &[u8]) {
    match text(bytes) {
        Some(s) => out.push_str(s),
        None => out.push_str(&String::from_utf8_lossy(bytes)),
    }
}

fn owned(bytes: &[u8]) -> String {
    let mut s = String::new();
    push_text(&mut s, bytes);
    s
}

impl Local {
    /// Takes the host's head for a new run (the edits of the last run are dropped); false when
    /// it is malformed.
    fn start(&mut self, head: Vec<u8>) -> bool {
        self.head = head;
        self.headers.clear();
        self.properties.clear();
        self.edits.clear();
        self.header_edits.clear();
        self.property_edits.clear();
        self.effects.clear();
        self.active = self.parse().is_some();
        self.active
    }

    fn parse(&mut self) -> Option<()> {
        let mut r = Reader {
            buf: &self.head,
            at: 0,
        };
        self.method = r.span()?;
        self.path = r.span()?;
        self.query = match r.u8()? {
            0 => None,
            _ => Some(r.span()?),
        };
        self.ip = match r.u8()? {
            0 => None,
            4 => {
                let at = r.take(4)?;
                let o: [u8; 4] = r.buf[at..at + 4].try_into().ok()?;
                Some(IpAddr::from(o))
            }
            6 => {
                let at = r.take(16)?;
                let o: [u8; 16] = r.buf[at..at + 16].try_into().ok()?;
                Some(IpAddr::from(o))
            }
            _ => return None,
        };
        self.route = r.span()?;
        self.request_id = r.span()?;
        for _ in 0..r.u32()? {
            let pair = (r.span()?, r.value()?);
            self.headers.push(pair);
        }
        for _ in 0..r.u32()? {
            let pair = (r.span()?, r.span()?);
            self.properties.push(pair);
        }
        self.targets = match r.u8()? {
            0 => None,
            _ => Some(r.at),
        };
        Some(())
    }

    /// The packed targets (`u32 n {...}`, the head's last part), copied into `out`; nothing
    /// outside a routed request.
    fn copy_targets(&self, out: &mut Vec<u8>) {
        if let Some(at) = self.targets {
            out.extend_from_slice(&self.head[at..]);
        }
    }

    fn head(&self, s: Span) -> &[u8] {
        slice(&self.head, s)
    }

    fn edit(&self, s: Span) -> &[u8] {
        slice(&self.edits, s)
    }

    /// Keeps `s` with the run's edits.
    fn keep(&mut self, s: &str) -> Span {
        let at = self.edits.len() as u32;
        self.edits.extend_from_slice(s.as_bytes());
        Span(at, s.len() as u32)
    }

    /// Appends `action` to the member's effects: the last op.
    fn push_action(&mut self, action: &Action) {
        let out = &mut self.effects;
        match action {
            Action::Continue => out.push(op::CONTINUE),
            Action::ContinueTo(target) => {
                out.push(op::CONTINUE_TO);
                put_str(out, target);
            }
            Action::Respond(LocalResponse {
                status,
                headers,
                body,
            }) => {
                out.push(op::RESPOND);
                out.extend_from_slice(&status.to_le_bytes());
                out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
                for h in headers {
                    put_str(out, &h.name);
                    put_str(out, &h.value);
                }
                out.extend_from_slice(&(body.len() as u32).to_le_bytes());
                out.extend_from_slice(body);
            }
        }
    }

    pub(crate) fn method(&self) -> String {
        owned(self.head(self.method))
    }
    pub(crate) fn path(&self) -> String {
        owned(self.head(self.path))
    }
    pub(crate) fn query(&self) -> Option<String> {
        self.query.map(|q| owned(self.head(q)))
    }
    pub(crate) fn client_addr(&self) -> String {
        self.ip.map(|ip| ip.to_string()).unwrap_or_default()
    }
    pub(crate) fn route(&self) -> String {
        owned(self.head(self.route))
    }
    pub(crate) fn request_id(&self) -> String {
        owned(self.head(self.request_id))
    }

    /// The latest edit of header `name` in this run: `Some(None)` removed, `Some(Some(v))`
    /// set to `v`.
    fn edited(&self, name: &str) -> Option<Option<&[u8]>> {
        self.header_edits
            .iter()
            .rev()
            .find(|(n, _)| self.edit(*n).eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.map(|v| self.edit(v)))
    }

    /// A header's value as the host would show it: the run's latest edit, else the head's
    /// first value (none when not readable).
    fn header_bytes(&self, name: &str) -> Option<&[u8]> {
        if let Some(edit) = self.edited(name) {
            return edit.filter(|v| readable(v));
        }
        self.headers
            .iter()
            .find(|(n, _)| self.head(*n).eq_ignore_ascii_case(name.as_bytes()))
            .and_then(|(_, v)| v.map(|v| self.head(v)))
    }

    pub(crate) fn get_header(&self, name: &str) -> Option<String> {
        self.header_bytes(name).map(owned)
    }

    /// Every header, in the order the host lists them. The host's map keeps one entry per
    /// name, in insertion order, with its values together: setting a name replaces its values
    /// in place, a new name goes last, and removing one moves the last entry into its place.
    pub(crate) fn get_headers(&self) -> Vec<Header> {
        // An unreadable value is kept as `None` so that the entries stay as the host's.
        let mut entries: Vec<(String, Vec<Option<Vec<u8>>>)> = Vec::new();
        for (n, v) in &self.headers {
            let name = owned(self.head(*n));
            let value = v.map(|v| self.head(v).to_vec());
            match entries.last_mut() {
                Some((last, values)) if *last == name => values.push(value),
                _ => entries.push((name, vec![value])),
            }
        }
        for (n, v) in &self.header_edits {
            let n = owned(self.edit(*n)).to_ascii_lowercase();
            let at = entries.iter().position(|(k, _)| *k == n);
            match (v, at) {
                (Some(v), Some(at)) => entries[at].1 = vec![Some(self.edit(*v).to_vec())],
                (Some(v), None) => entries.push((n, vec![Some(self.edit(*v).to_vec())])),
                (None, Some(at)) => {
                    entries.swap_remove(at);
                }
                (None, None) => {}
            }
        }
        entries
            .into_iter()
            .flat_map(|(name, values)| {
                values.into_iter().filter_map(move |v| {
                    v.filter(|v| readable(v)).map(|v| Header {
                        name: name.clone(),
                        value: owned(&v),
                    })
                })
            })
            .collect()
    }

    pub(crate) fn set_header(&mut self, name: &str, value: &str) {
        if !valid_name(name) || !valid_value(value.as_bytes()) {
            return;
        }
        let edit = (self.keep(name), Some(self.keep(value)));
        self.header_edits.push(edit);
        self.effects.push(op::SET_HEADER);
        put_str(&mut self.effects, name);
        put_str(&mut self.effects, value);
    }

    pub(crate) fn remove_header(&mut self, name: &str) {
        if !valid_name(name) {
            return;
        }
        let edit = (self.keep(name), None);
        self.header_edits.push(edit);
        self.effects.push(op::REMOVE_HEADER);
        put_str(&mut self.effects, name);
    }

    /// A property: the run's latest edit, else the head's.
    fn property_bytes(&self, key: &str) -> Option<&[u8]> {
        if let Some((_, v)) = self
            .property_edits
            .iter()
            .rev()
            .find(|(k, _)| self.edit(*k) == key.as_bytes())
        {
            return Some(self.edit(*v));
        }
        self.properties
            .iter()
            .find(|(k, _)| self.head(*k) == key.as_bytes())
            .map(|(_, v)| self.head(*v))
    }

    pub(crate) fn get_property(&self, key: &str) -> Option<String> {
        self.property_bytes(key).map(owned)
    }

    pub(crate) fn set_property(&mut self, key: &str, value: &str) {
        let edit = (self.keep(key), self.keep(value));
        self.property_edits.push(edit);
        self.effects.push(op::SET_PROPERTY);
        put_str(&mut self.effects, key);
        put_str(&mut self.effects, value);
    }

    pub(crate) fn queue_response_header(&mut self, name: &str, value: &str, mode: QueueMode) {
        self.effects.push(op::QUEUE_RESPONSE_HEADER);
        self.effects.push(match mode {
            QueueMode::Replace => 0,
            QueueMode::KeepExisting => 1,
            QueueMode::Append => 2,
        });
        put_str(&mut self.effects, name);
        put_str(&mut self.effects, value);
    }

    pub(crate) fn skip_response_body(&mut self) {
        self.effects.push(op::SKIP_RESPONSE_BODY);
    }

    pub(crate) fn counter_add(&mut self, name: &str, value: u64) {
        self.effects.push(op::COUNTER_ADD);
        put_str(&mut self.effects, name);
        self.effects.extend_from_slice(&value.to_le_bytes());
    }

    pub(crate) fn histogram_observe(&mut self, name: &str, value: f64) {
        self.effects.push(op::HISTOGRAM_OBSERVE);
        put_str(&mut self.effects, name);
        self.effects
            .extend_from_slice(&value.to_bits().to_le_bytes());
    }
}
