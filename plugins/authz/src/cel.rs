//! CEL conditions (`when: [{key: cel, values: [...]}]`) over Envoy-style
//! attributes.
//!
//! An expression is compiled once, at configure time, against one shared
//! environment: the CEL standard library with `matches` replaced by a
//! version that keeps compiled regexes (the crate's own compiles the
//! pattern on every call). Compiling also reads which attributes the
//! expression uses (`request.path`, `request.headers['x-user']`, ...), and
//! refuses unknown ones; at run time only those are read from the request,
//! so an expression that looks at one header costs one header lookup.
//!
//! Expressions are parsed by the crate's hand-written Pratt parser, not its
//! default ANTLR one. Every namespace's plugin is a fresh instance, and the
//! ANTLR parser builds its prediction tables anew in each (about 2 ms
//! natively for the first expressions, twice that in the guest); its
//! runtime was also about a quarter of the module's code, compiled again
//! at every cold start. A test parses a corpus with both parsers and
//! requires the same trees.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use cel::common::types::{CelBool, CelString};
use cel::parser::PrattParser;
use cel::{Context, Env, ExecutionError, Value};
use regex_lite::{Regex, RegexBuilder};
use wayplug_sdk::Request;

use crate::matcher::address_port;

/// The attributes an expression can read, by variable.
const ATTRIBUTES: &[(&str, &[&str])] = &[
    (
        "request",
        &[
            "headers", "path", "url_path", "method", "host", "scheme", "query",
        ],
    ),
    ("source", &["address", "port", "principal", "namespace"]),
    ("destination", &["address", "port"]),
    ("connection", &["sni", "requested_server_name", "mtls"]),
];

/// At most this many distinct regex patterns are kept compiled; more are
/// compiled per call rather than growing the cache without bound.
const MAX_CACHED_REGEXES: usize = 256;
/// Compiled size limit of one regex, so a pathological pattern cannot take
/// the plugin's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest expression source. A chain such as `a + a + ...` nests one level
/// per operator, and evaluating or dropping a tree recurses through it: the
/// length bounds the depth the parser can build before [`MAX_DEPTH`] is
/// checked, so neither exhausts the guest's stack.
const MAX_EXPRESSION_BYTES: usize = 4096;
/// Deepest nesting of an expression's tree (cel-go's default parse limit).
const MAX_DEPTH: usize = 250;

/// The parser every expression goes through: CEL's standard macros (those
/// `env()` compiles with). A macro adds a bounded number of nodes, so
/// [`MAX_EXPRESSION_BYTES`] bounds the tree's size as well.
fn parser() -> PrattParser {
    PrattParser::new()
}

// The overload macros name the argument types without their lifetimes.
#[allow(elided_lifetimes_in_paths)]
fn env() -> &'static Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Env::stdlib();
        // The crate's regex feature is off, so these names are free.
        cel::add_overload!(env, fn cached_matches: (CelString, CelString) -> Result<CelBool>,
            name = "matches", id = "matches")
        .expect("matches is not declared without the regex feature");
        cel::add_member_overload!(env, fn cached_matches: (CelString, CelString) -> Result<CelBool>,
            name = "matches", id = "string.matches(string)")
        .expect("matches is not declared without the regex feature");
        Arc::new(env)
    })
}

fn regex_cache() -> &'static Mutex<HashMap<String, Arc<Regex>>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Regex>>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn compile_regex(pattern: &str) -> Result<Arc<Regex>, ExecutionError> {
    let mut cache = regex_cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(re) = cache.get(pattern) {
        return Ok(re.clone());
    }
    let re = RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map(Arc::new)
        .map_err(|e| ExecutionError::FunctionError {
            function: "matches".to_string(),
            message: format!("'{pattern}' is not a valid regex: {e}"),
        })?;
    if cache.len() < MAX_CACHED_REGEXES {
        cache.insert(pattern.to_string(), re.clone());
    }
    Ok(re)
}

fn cached_matches(this: &CelString<'_>, re: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    let compiled = compile_regex(re.inner())?;
    Ok(CelBool::from(compiled.is_match(this.inner())))
}

/// Which request headers an expression reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
enum Headers {
    #[default]
    None,
    /// Only these (lower-case), by literal name.
    Named(BTreeSet<String>),
    /// The whole map (iterated, sized, indexed by a computed name).
    All,
}

/// The attributes one expression reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// `(variable, attribute)`, `headers` excluded.
    fields: BTreeSet<(String, String)>,
    headers: Headers,
}

impl Needs {
    fn header(&mut self, name: &str) {
        match &mut self.headers {
            Headers::All => {}
            Headers::Named(names) => {
                names.insert(name.to_ascii_lowercase());
            }
            Headers::None => {
                self.headers = Headers::Named(BTreeSet::from([name.to_ascii_lowercase()]));
            }
        }
    }

    fn field(&mut self, var: &str, field: &str) -> Result<(), String> {
        let known = ATTRIBUTES
            .iter()
            .find(|(v, _)| *v == var)
            .ok_or_else(|| unknown_variable(var))?;
        if !known.1.contains(&field) {
            return Err(format!(
                "unknown attribute `{var}.{field}` (known: {})",
                known
                    .1
                    .iter()
                    .map(|f| format!("{var}.{f}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if field == "headers" {
            self.headers = Headers::All;
        } else {
            self.fields.insert((var.to_string(), field.to_string()));
        }
        Ok(())
    }

    /// The variable used whole: every attribute of it.
    fn all(&mut self, var: &str) -> Result<(), String> {
        let known = ATTRIBUTES
            .iter()
            .find(|(v, _)| *v == var)
            .ok_or_else(|| unknown_variable(var))?;
        for field in known.1 {
            self.field(var, field)?;
        }
        Ok(())
    }

    fn reads(&self, var: &str) -> bool {
        self.fields.iter().any(|(v, _)| v == var)
            || (var == "request" && self.headers != Headers::None)
    }

    fn reads_field(&self, var: &str, field: &str) -> bool {
        self.fields.iter().any(|(v, f)| v == var && f == field)
    }
}

fn unknown_variable(var: &str) -> String {
    format!(
        "unknown variable `{var}` (known: {})",
        ATTRIBUTES
            .iter()
            .map(|(v, _)| *v)
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn ident(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Ident(name) => Some(name),
        _ => None,
    }
}

fn is_request_headers(e: &IdedExpr) -> bool {
    matches!(&e.expr, Expr::Select(s) if !s.test && s.field == "headers" && ident(&s.operand) == Some("request"))
}

fn literal_string(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// Collects what `e` reads. `bound` holds comprehension variables in scope.
fn walk(
    e: &IdedExpr,
    depth: usize,
    bound: &mut Vec<String>,
    needs: &mut Needs,
) -> Result<(), String> {
    if depth > MAX_DEPTH {
        return Err(format!("nests deeper than {MAX_DEPTH} levels"));
    }
    let depth = depth + 1;
    match &e.expr {
        Expr::Unspecified | Expr::Literal(_) => Ok(()),
        Expr::Ident(name) if bound.contains(name) => Ok(()),
        Expr::Ident(name) => needs.all(name),
        Expr::Select(s) => {
            if let Some(var) = ident(&s.operand)
                && !bound.iter().any(|b| b == var)
            {
                return needs.field(var, &s.field);
            }
            if is_request_headers(&s.operand) {
                needs.header(&s.field);
                return Ok(());
            }
            walk(&s.operand, depth, bound, needs)
        }
        Expr::Call(c) => {
            let literal_header = match (c.func_name.as_str(), c.args.as_slice()) {
                (operators::INDEX | operators::OPT_INDEX, [map, key])
                    if is_request_headers(map) =>
                {
                    literal_string(key)
                }
                (operators::IN, [key, map]) if is_request_headers(map) => literal_string(key),
                _ => None,
            };
            if let Some(name) = literal_header {
                needs.header(name);
                return Ok(());
            }
            if let Some(target) = &c.target {
                walk(target, depth, bound, needs)?;
            }
            c.args.iter().try_for_each(|a| walk(a, depth, bound, needs))
        }
        Expr::List(l) => l
            .elements
            .iter()
            .try_for_each(|a| walk(a, depth, bound, needs)),
        Expr::Map(m) => m
            .entries
            .iter()
            .try_for_each(|entry| walk_entry(&entry.expr, depth, bound, needs)),
        Expr::Struct(s) => s
            .entries
            .iter()
            .try_for_each(|entry| walk_entry(&entry.expr, depth, bound, needs)),
        Expr::Comprehension(c) => {
            walk(&c.iter_range, depth, bound, needs)?;
            walk(&c.accu_init, depth, bound, needs)?;
            let before = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.clone());
            bound.push(c.accu_var.clone());
            let inner = [&c.loop_cond, &c.loop_step, &c.result]
                .into_iter()
                .try_for_each(|a| walk(a, depth, bound, needs));
            bound.truncate(before);
            inner
        }
    }
}

fn walk_entry(
    entry: &cel::common::ast::EntryExpr,
    depth: usize,
    bound: &mut Vec<String>,
    needs: &mut Needs,
) -> Result<(), String> {
    match entry {
        cel::common::ast::EntryExpr::StructField(f) => walk(&f.value, depth, bound, needs),
        cel::common::ast::EntryExpr::MapEntry(m) => {
            walk(&m.key, depth, bound, needs)?;
            walk(&m.value, depth, bound, needs)
        }
    }
}

/// A compiled CEL condition.
#[derive(Clone)]
pub struct CelExpr {
    source: String,
    program: Arc<IdedExpr>,
    needs: Needs,
}

impl std::fmt::Debug for CelExpr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelExpr")
            .field("source", &self.source)
            .finish()
    }
}

/// What an expression is evaluated against.
pub struct CelInput<'a> {
    pub req: &'a Request,
    /// The normalized path without the query.
    pub path: &'a str,
}

impl CelExpr {
    /// Compiles `source`; the error names the expression and the position.
    pub fn compile(source: &str) -> Result<CelExpr, String> {
        if source.len() > MAX_EXPRESSION_BYTES {
            return Err(format!(
                "CEL expression `{}...` is {} bytes, longer than {MAX_EXPRESSION_BYTES}",
                source.chars().take(40).collect::<String>(),
                source.len()
            ));
        }
        let program = parser().parse(source).map_err(|errors| {
            let detail = errors
                .errors
                .iter()
                .map(|e| format!("line {}, column {}: {}", e.pos.0, e.pos.1 + 1, e.msg))
                .collect::<Vec<_>>()
                .join("; ");
            format!("CEL expression `{source}` does not compile: {detail}")
        })?;
        let mut needs = Needs::default();
        walk(&program, 0, &mut Vec::new(), &mut needs)
            .map_err(|e| format!("CEL expression `{source}`: {e}"))?;
        Ok(CelExpr {
            source: source.to_string(),
            program: Arc::new(program),
            needs,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates to a boolean; anything else, or a failure, is an error.
    pub fn eval(&self, input: &CelInput<'_>) -> Result<bool, String> {
        let mut ctx = Context::with_env(env().clone());
        for (var, _) in ATTRIBUTES {
            if self.needs.reads(var) {
                ctx.add_variable_from_value(*var, self.variable(var, input));
            }
        }
        match Value::resolve(&self.program, &ctx) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("evaluated to {:?}, not a bool", other.type_of())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The map for `var` with only the attributes this expression reads.
    fn variable(&self, var: &str, input: &CelInput<'_>) -> Value {
        let req = input.req;
        let mut map: HashMap<String, Value> = HashMap::new();
        let mut put = |field: &str, value: &dyn Fn() -> Value| {
            if self.needs.reads_field(var, field) {
                map.insert(field.to_string(), value());
            }
        };
        let string = |s: &str| Value::String(Arc::new(s.to_string()));
        match var {
            "request" => {
                put("path", &|| match req.query() {
                    Some(q) => string(&format!("{}?{q}", input.path)),
                    None => string(input.path),
                });
                put("url_path", &|| string(input.path));
                put("method", &|| string(req.method()));
                put("host", &|| string(req.authority()));
                put("scheme", &|| string(req.scheme()));
                put("query", &|| string(req.query().unwrap_or_default()));
                if let Some(headers) = self.headers(req) {
                    map.insert("headers".to_string(), headers);
                }
            }
            "source" => {
                let src = req.source();
                put("address", &|| string(&src.address));
                put("port", &|| Value::Int(address_port(&src.address).into()));
                put("principal", &|| {
                    string(src.principal.as_deref().unwrap_or_default())
                });
                put("namespace", &|| {
                    string(src.namespace.as_deref().unwrap_or_default())
                });
            }
            "destination" => {
                let dest = req.destination();
                put("address", &|| string(&dest.address));
                put("port", &|| Value::Int(dest.port.into()));
            }
            "connection" => {
                let conn = req.connection();
                let sni = || string(conn.requested_server_name.as_deref().unwrap_or_default());
                put("sni", &sni);
                put("requested_server_name", &sni);
                put("mtls", &|| Value::Bool(conn.mtls));
            }
            _ => {}
        }
        Value::from(map)
    }

    fn headers(&self, req: &Request) -> Option<Value> {
        let map: HashMap<String, Value> = match &self.needs.headers {
            Headers::None => return None,
            Headers::Named(names) => names
                .iter()
                .filter_map(|n| Some((n.clone(), Value::String(Arc::new(req.header(n)?)))))
                .collect(),
            Headers::All => {
                let mut joined: HashMap<String, String> = HashMap::new();
                for (name, value) in req.headers() {
                    joined
                        .entry(name)
                        .and_modify(|v| {
                            v.push(',');
                            v.push_str(&value);
                        })
                        .or_insert(value);
                }
                joined
                    .into_iter()
                    .map(|(k, v)| (k, Value::String(Arc::new(v))))
                    .collect()
            }
        };
        Some(Value::from(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wayplug_sdk::{Destination, Identity};

    fn request() -> Request {
        Request::builder()
            .method("POST")
            .path("/api/v1/items?limit=5")
            .authority("api.shop.svc.cluster.local:8080")
            .header("x-user", "alice")
            .header("x-tags", "a")
            .header("x-tags", "b")
            .source(
                Identity::spiffe("cluster.local", "web", "frontend").with_address("10.1.2.3:4567"),
            )
            .destination(Destination::new("api.shop.svc.cluster.local", "shop", 8080))
            .build()
    }

    fn eval(source: &str) -> Result<bool, String> {
        let req = request();
        let input = CelInput {
            req: &req,
            path: req.path(),
        };
        CelExpr::compile(source)?.eval(&input)
    }

    #[test]
    fn attributes_table() {
        let rows = [
            ("request.method == 'POST'", true),
            ("request.path == '/api/v1/items?limit=5'", true),
            ("request.url_path == '/api/v1/items'", true),
            ("request.query == 'limit=5'", true),
            ("request.host == 'api.shop.svc.cluster.local:8080'", true),
            ("request.scheme == 'http'", true),
            ("request.headers['x-user'] == 'alice'", true),
            ("request.headers['x-tags'] == 'a,b'", true),
            ("'x-user' in request.headers", true),
            ("'x-none' in request.headers", false),
            ("request.headers.exists(k, k == 'x-user')", true),
            ("size(request.headers) == 2", true),
            (
                "source.principal == 'cluster.local/ns/web/sa/frontend'",
                true,
            ),
            ("source.namespace == 'web'", true),
            ("source.address == '10.1.2.3:4567'", true),
            ("source.port == 4567", true),
            ("destination.port == 8080", true),
            ("destination.address == '10.96.0.1:8080'", true),
            ("connection.mtls", true),
            ("connection.sni == ''", true),
            ("request.url_path.matches('^/api/v[0-9]+/')", true),
            ("matches(request.url_path, '^/admin')", false),
            (
                "request.url_path.startsWith('/api') && request.method in ['GET', 'POST']",
                true,
            ),
        ];
        for (source, expected) in rows {
            assert_eq!(eval(source), Ok(expected), "{source}");
        }
    }

    #[test]
    fn needs_only_what_is_read() {
        let e = CelExpr::compile("request.headers['X-User'] == 'a' && source.port > 0").unwrap();
        assert_eq!(
            e.needs.headers,
            Headers::Named(BTreeSet::from(["x-user".to_string()]))
        );
        assert!(e.needs.reads_field("source", "port"));
        assert!(!e.needs.reads_field("request", "path"));
        assert!(!e.needs.reads("destination"));
        let all = CelExpr::compile("size(request.headers) > 0").unwrap();
        assert_eq!(all.needs.headers, Headers::All);
        let bound = CelExpr::compile("[1, 2].exists(x, x == destination.port)").unwrap();
        assert!(bound.needs.reads_field("destination", "port"));
    }

    /// The Pratt parser against the crate's ANTLR one, on the forms
    /// conditions are written in: the same tree for every valid
    /// expression, an error from both for every invalid one. Node ids are
    /// left out: they only place errors in the source, and the two number
    /// a map entry and its key in opposite orders.
    #[test]
    fn both_cel_parsers_agree() {
        let ids = Regex::new(r"id: [0-9]+").unwrap();
        let tree = |e: &IdedExpr| ids.replace_all(&format!("{e:?}"), "id").into_owned();
        let valid = [
            "request.headers['x-user'] == 'alice'",
            "request.url_path.matches('^/orders/[0-9]+$') && source.address != ''",
            "request.method in ['GET', 'POST'] || !(destination.port == 8080)",
            "has(request.headers.x_user) ? request.headers.x_user == 'a' : false",
            "request.headers.exists(k, k.startsWith('x-'))",
            "[1, 2, 3].all(x, x > 0) && [1u, 2u].exists_one(y, y == 2u)",
            "[1, 2].map(x, x * 2).filter(y, y > 2).size() == 1",
            "{'a': 1, 'b': [2.5, -3e2]}['a'] == 1 && b'\\x01' != b''",
            "size(request.path) >= 1 && request.path.endsWith(\"/\") == false",
            "r'\\d+' + '\\n\\u00e9' != '' && -(-1) % 2 == 1 && 3 / 2 - 1 < 1.0",
            "source.principal.contains('/ns/prod/') && connection.mtls",
            "int('7') + uint(1) > 0 && double(2) == 2.0 && string(1) == '1'",
            "a.b.c[0].d(e, f)[g] == null || true",
        ];
        for source in valid {
            let antlr = cel::parser::Parser::new().parse(source);
            let pratt = parser().parse(source);
            match (antlr, pratt) {
                (Ok(a), Ok(p)) => assert_eq!(tree(&a), tree(&p), "{source}"),
                (a, p) => panic!("{source}: ANTLR {a:?}, Pratt {p:?}"),
            }
        }
        let invalid = [
            "request.path == ",
            "(request.path",
            "request..path",
            "'unterminated",
            "1 +* 2",
            "a ? b",
            "[1, 2",
            "{'a' 1}",
            "has(1)",
            "",
        ];
        for source in invalid {
            assert!(
                cel::parser::Parser::new().parse(source).is_err(),
                "ANTLR accepts {source:?}"
            );
            assert!(parser().parse(source).is_err(), "Pratt accepts {source:?}");
        }
    }

    #[test]
    fn expressions_too_long_or_too_deep_are_refused() {
        // A chain of additions nests one level a term.
        let chain = |terms: usize| vec!["1"; terms].join("+") + " > 0";
        assert_eq!(eval(&chain(MAX_DEPTH - 2)), Ok(true));
        let err = CelExpr::compile(&chain(MAX_DEPTH + 1)).unwrap_err();
        assert!(
            err.contains(&format!("nests deeper than {MAX_DEPTH} levels")),
            "{err}"
        );
        let err = CelExpr::compile(&chain(MAX_EXPRESSION_BYTES)).unwrap_err();
        assert!(
            err.contains(&format!("longer than {MAX_EXPRESSION_BYTES}")),
            "{err}"
        );
    }

    #[test]
    fn compile_errors_name_expression_and_position() {
        let err = CelExpr::compile("request.path == ").unwrap_err();
        assert!(
            err.starts_with("CEL expression `request.path == ` does not compile: line 1, column"),
            "{err}"
        );
        let err = CelExpr::compile("request.pathz == '/'").unwrap_err();
        assert!(err.contains("unknown attribute `request.pathz`"), "{err}");
        let err = CelExpr::compile("foo == 1").unwrap_err();
        assert!(err.contains("unknown variable `foo`"), "{err}");
    }

    #[test]
    fn runtime_errors_are_errors() {
        assert!(eval("request.headers['x-missing'] == 'a'").is_err());
        assert!(eval("request.method").is_err(), "not a bool");
        assert!(eval("request.url_path.matches('(')").is_err(), "bad regex");
    }

    #[test]
    fn regexes_use_re2s_ascii_classes() {
        // CEL's `matches` is RE2: `\d`, `\w` and `\s` are ASCII classes.
        assert_eq!(eval(r"'7'.matches('^\\d$')"), Ok(true));
        assert_eq!(eval(r"'٣'.matches('^\\d$')"), Ok(false));
        assert_eq!(eval(r"'δ'.matches('^\\w$')"), Ok(false));
        assert_eq!(eval(r"'δ'.matches('^.$')"), Ok(true), "one code point");
        assert_eq!(eval(r"'ABC'.matches('(?i)^abc$')"), Ok(true));
        assert_eq!(
            eval(r"'É'.matches('(?i)^é$')"),
            Ok(false),
            "ASCII case folding"
        );
        // Unicode property classes are not supported: refused, never guessed.
        let err = eval(r"'é'.matches('\\p{L}')").unwrap_err();
        assert!(err.contains("is not a valid regex"), "{err}");
    }

    #[test]
    fn regexes_are_cached() {
        assert_eq!(
            eval("request.url_path.matches('^/api/v1/items$')"),
            Ok(true)
        );
        let cache = regex_cache().lock().unwrap();
        assert!(cache.contains_key("^/api/v1/items$"));
    }
}
