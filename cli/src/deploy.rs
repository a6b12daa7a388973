//! `tokentrail deploy`: both patterns on AWS, from the CloudFormation templates in `deploy/`.
//!
//! The templates are the one source of truth: the plan is read from them (functions, roles and
//! what each may do, resource policies, the trust between the accounts), evaluated with the
//! parameters of a TOML file, so what `--plan` prints is what CloudFormation would build.
//! Parameter values are checked against the templates' own constraints (`AllowedPattern`,
//! `AllowedValues`, lengths) and `Rules` before anything is deployed.
//!
//! ```toml
//! region = "eu-west-1"
//! pattern = "broker"            # or "passthrough" (then the central account is not needed)
//!
//! [central]                     # deployed first
//! account_id = "444455556666"
//! profile = "central-admin"     # AWS profile for this account (optional)
//! [central.parameters]          # CloudFormation parameters of deploy/central.json by name
//! ExternalId = "tokentrail-7d2f"
//!
//! [workload]
//! account_id = "111122223333"
//! [workload.parameters]
//! DiscoveryUrl = "https://idp.example.com/.well-known/openid-configuration"
//! ```
//!
//! Deploying runs the AWS SAM CLI (`sam deploy`) once per stack: it uploads the Lambda zips to
//! its managed bucket, creates a change set and waits for it. The broker stack's outputs
//! (`BrokerUrl`) feed the workload stack.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The two stacks, in deploy order.
pub const STACKS: [Stack; 2] = [Stack::Central, Stack::Workload];

/// One of the two accounts' stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stack {
    /// The central (broker) account.
    Central,
    /// The workload account (agent, gateway, interceptor, target).
    Workload,
}

impl Stack {
    /// Its name in the params file and its template's file stem.
    pub fn as_str(self) -> &'static str {
        match self {
            Stack::Central => "central",
            Stack::Workload => "workload",
        }
    }

    fn default_stack_name(self) -> String {
        format!("tokentrail-{}", self.as_str())
    }
}

/// One account's section of the params file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountParams {
    /// The 12-digit account id.
    #[serde(default)]
    pub account_id: Option<String>,
    /// AWS profile to deploy with (`--profile`).
    #[serde(default)]
    pub profile: Option<String>,
    /// CloudFormation stack name (default `tokentrail-<account>`).
    #[serde(default)]
    pub stack_name: Option<String>,
    /// Template parameters by name.
    #[serde(default)]
    pub parameters: BTreeMap<String, toml::Value>,
}

/// The params file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Region of both stacks.
    #[serde(default)]
    pub region: Option<String>,
    /// `passthrough` or `broker`.
    #[serde(default = "default_pattern")]
    pub pattern: String,
    /// The central account.
    #[serde(default)]
    pub central: AccountParams,
    /// The workload account.
    #[serde(default)]
    pub workload: AccountParams,
}

fn default_pattern() -> String {
    "passthrough".into()
}

impl Params {
    /// Read and parse `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no deploy parameters at {}: start from the example, `cp \
                 deploy/params.example.toml {}`, fill in accounts, region and IdP, then run \
                 `tokentrail deploy --plan`",
                path.display(),
                path.display()
            ),
            Err(e) => bail!("cannot read the deploy parameters {}: {e}", path.display()),
        };
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "the deploy parameters {} are not valid: {e}",
                path.display()
            )
        })
    }

    fn account(&self, stack: Stack) -> &AccountParams {
        match stack {
            Stack::Central => &self.central,
            Stack::Workload => &self.workload,
        }
    }

    /// The stacks this pattern deploys, in order.
    pub fn stacks(&self) -> Vec<Stack> {
        if self.pattern == "broker" {
            STACKS.to_vec()
        } else {
            vec![Stack::Workload]
        }
    }
}

/// Where a parameter's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The params file.
    Given,
    /// Derived from another section (`[workload] account_id`, the central stack's output, …).
    Derived(String),
    /// The template's default.
    Default,
}

/// A template and the values of its parameters.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Which stack.
    pub stack: Stack,
    /// Template path.
    pub template_path: PathBuf,
    /// The template.
    pub template: Value,
    /// Parameter values (CommaDelimitedList joined by commas), with their source.
    pub values: BTreeMap<String, (String, Source)>,
    /// Required parameters with no value.
    pub unset: Vec<String>,
    /// Values that break the template's constraints, with the reason.
    pub malformed: Vec<String>,
    /// The account id, region and partition pseudo parameters.
    pub account_id: Option<String>,
    /// Region.
    pub region: String,
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => a.iter().map(value_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Load the template of `stack` from `dir` and resolve its parameters from `params`
/// (`outputs`: the central stack's outputs, once it is deployed).
pub fn resolve(
    dir: &Path,
    stack: Stack,
    params: &Params,
    outputs: &BTreeMap<String, String>,
) -> Result<Resolved> {
    let template_path = dir.join(format!("{}.json", stack.as_str()));
    let text = std::fs::read_to_string(&template_path)
        .with_context(|| format!("cannot read the template {}", template_path.display()))?;
    let template: Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not JSON", template_path.display()))?;
    let account = params.account(stack);
    let mut given: BTreeMap<String, (String, Source)> = account
        .parameters
        .iter()
        .map(|(k, v)| (k.clone(), (value_text(v), Source::Given)))
        // An empty value is no value: the template's default, or unset.
        .filter(|(_, (v, _))| !v.trim().is_empty())
        .collect();
    // What one stack needs of the other, so the same value is never typed twice.
    let mut derive = |name: &str, value: Option<String>, from: &str| {
        if let Some(v) = value.filter(|v| !v.trim().is_empty())
            && !given.contains_key(name)
        {
            given.insert(name.to_owned(), (v, Source::Derived(from.to_owned())));
        }
    };
    match stack {
        Stack::Central => {
            derive(
                "WorkloadAccountId",
                params.workload.account_id.clone(),
                "[workload] account_id",
            );
            for (name, from) in [
                ("IdpIssuer", "IdpIssuer"),
                ("InterceptorRoleName", "InterceptorRoleName"),
                ("BrokerId", "BrokerId"),
                ("TraceExport", "TraceExport"),
                ("CollectorEndpoint", "CollectorEndpoint"),
            ] {
                derive(
                    name,
                    params.workload.parameters.get(from).map(value_text),
                    &format!("[workload.parameters] {from}"),
                );
            }
        }
        Stack::Workload => {
            derive("Pattern", Some(params.pattern.clone()), "pattern");
            if params.pattern == "broker" {
                derive(
                    "CentralAccountId",
                    params.central.account_id.clone(),
                    "[central] account_id",
                );
                for (name, from) in [("BrokerExternalId", "ExternalId"), ("BrokerId", "BrokerId")] {
                    derive(
                        name,
                        params.central.parameters.get(from).map(value_text),
                        &format!("[central.parameters] {from}"),
                    );
                }
                derive(
                    "BrokerUrl",
                    outputs.get("BrokerUrl").cloned(),
                    "the central stack's output BrokerUrl",
                );
            }
        }
    }
    let declared = template
        .get("Parameters")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut values = BTreeMap::new();
    let mut unset = Vec::new();
    let mut malformed = Vec::new();
    for name in given.keys() {
        if !declared.contains_key(name) {
            malformed.push(format!(
                "{name}: {} has no such parameter (it has {})",
                template_path.display(),
                declared.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    for (name, decl) in &declared {
        let value = match given.get(name) {
            Some(v) => v.clone(),
            None => match decl.get("Default") {
                Some(d) => (json_text(d), Source::Default),
                None => {
                    unset.push(name.clone());
                    continue;
                }
            },
        };
        if value.1 != Source::Default
            && let Err(reason) = check_value(decl, &value.0)
        {
            malformed.push(format!("{name} = `{}`: {reason}", value.0));
        }
        values.insert(name.clone(), value);
    }
    let mut resolved = Resolved {
        stack,
        template_path,
        template,
        values,
        unset,
        malformed,
        account_id: account.account_id.clone().filter(|a| !a.trim().is_empty()),
        region: params.region.clone().unwrap_or_default(),
    };
    if let Some(id) = &resolved.account_id
        && !is_account_id(id)
    {
        resolved.malformed.push(format!(
            "[{}] account_id = `{id}`: not a 12-digit AWS account id",
            stack.as_str()
        ));
    }
    if resolved.region.is_empty() {
        resolved.unset.push("region".into());
    } else if !is_region(&resolved.region) {
        resolved.malformed.push(format!(
            "region = `{}`: not an AWS region such as eu-west-1",
            resolved.region
        ));
    }
    if resolved.account_id.is_none() {
        resolved
            .unset
            .push(format!("[{}] account_id", stack.as_str()));
    }
    resolved.check_rules();
    Ok(resolved)
}

fn is_account_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
        && parts
            .last()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
}

fn json_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A value against a parameter's declared constraints, as CloudFormation checks them (each item
/// of a `CommaDelimitedList`; `AllowedPattern` must match the whole value).
fn check_value(decl: &Value, value: &str) -> Result<(), String> {
    let is_list = decl.get("Type").and_then(Value::as_str) == Some("CommaDelimitedList");
    let items: Vec<&str> = if is_list {
        value.split(',').map(str::trim).collect()
    } else {
        vec![value]
    };
    if is_list && items.iter().any(|i| i.is_empty()) {
        return Err("a list item is empty".into());
    }
    let why = decl
        .get("ConstraintDescription")
        .and_then(Value::as_str)
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    for item in items {
        if let Some(allowed) = decl.get("AllowedValues").and_then(Value::as_array)
            && !allowed.iter().any(|a| a.as_str() == Some(item))
        {
            return Err(format!(
                "must be one of {}",
                allowed.iter().map(json_text).collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(p) = decl.get("AllowedPattern").and_then(Value::as_str) {
            let re = regex::Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| format!("the template's pattern `{p}` is not a regex: {e}"))?;
            if !re.is_match(item) {
                return Err(format!("does not match {p}{why}"));
            }
        }
        let len = item.chars().count() as u64;
        if let Some(min) = decl.get("MinLength").and_then(Value::as_u64)
            && len < min
        {
            return Err(format!("shorter than {min} characters"));
        }
        if let Some(max) = decl.get("MaxLength").and_then(Value::as_u64)
            && len > max
        {
            return Err(format!("longer than {max} characters"));
        }
    }
    Ok(())
}

impl Resolved {
    /// The template's `Rules` whose assertions are plain "this parameter is not empty" checks.
    fn check_rules(&mut self) {
        let Some(rules) = self
            .template
            .get("Rules")
            .and_then(Value::as_object)
            .cloned()
        else {
            return;
        };
        for rule in rules.values() {
            let applies = rule
                .get("RuleCondition")
                .is_none_or(|c| self.condition(c).unwrap_or(false));
            if !applies {
                continue;
            }
            for assertion in rule
                .get("Assertions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let holds = assertion
                    .get("Assert")
                    .and_then(|a| self.condition(a))
                    .unwrap_or(true);
                if !holds {
                    let what = assertion
                        .get("AssertDescription")
                        .and_then(Value::as_str)
                        .unwrap_or("a rule of the template fails");
                    // An unset parameter is already listed; name the rule next to it.
                    let param = assertion
                        .pointer("/Assert/Fn::Not/0/Fn::Equals/0/Ref")
                        .and_then(Value::as_str);
                    match param {
                        Some(p) if !self.values.contains_key(p) || self.value(p).is_empty() => {
                            let entry = format!("{p} ({what})");
                            self.unset.retain(|u| u != p);
                            self.unset.push(entry);
                        }
                        _ => self.malformed.push(what.to_owned()),
                    }
                }
            }
        }
    }

    fn value(&self, name: &str) -> &str {
        self.values.get(name).map(|v| v.0.as_str()).unwrap_or("")
    }

    fn pseudo(&self, name: &str) -> Option<String> {
        match name {
            "AWS::AccountId" => Some(
                self.account_id
                    .clone()
                    .unwrap_or_else(|| format!("<{} account>", self.stack.as_str())),
            ),
            "AWS::Region" => Some(if self.region.is_empty() {
                "<region>".into()
            } else {
                self.region.clone()
            }),
            "AWS::Partition" => Some("aws".into()),
            "AWS::StackName" => Some(self.stack.default_stack_name()),
            _ => None,
        }
    }

    /// Evaluate a condition expression (`Fn::Equals`, `Fn::Not`, `Fn::And`, `Fn::Or`,
    /// `Condition`).
    pub fn condition(&self, expr: &Value) -> Option<bool> {
        let obj = expr.as_object()?;
        let (op, arg) = obj.iter().next()?;
        match op.as_str() {
            "Fn::Equals" => {
                let a = arg.as_array()?;
                Some(self.render(a.first()?) == self.render(a.get(1)?))
            }
            "Fn::Not" => Some(!self.condition(arg.as_array()?.first()?)?),
            "Fn::And" => arg
                .as_array()?
                .iter()
                .map(|c| self.condition(c))
                .try_fold(true, |acc, c| Some(acc && c?)),
            "Fn::Or" => arg
                .as_array()?
                .iter()
                .map(|c| self.condition(c))
                .try_fold(false, |acc, c| Some(acc || c?)),
            "Condition" => self.named_condition(arg.as_str()?),
            _ => None,
        }
    }

    fn named_condition(&self, name: &str) -> Option<bool> {
        self.condition(self.template.get("Conditions")?.get(name)?)
    }

    /// Evaluate `expr` with `Fn::If` resolved; `None` when it is `AWS::NoValue`.
    pub fn eval(&self, expr: &Value) -> Option<Value> {
        match expr {
            Value::Object(o) if o.len() == 1 && is_intrinsic(o) => {
                let (op, arg) = o.iter().next()?;
                match op.as_str() {
                    "Fn::If" => {
                        let a = arg.as_array()?;
                        let pick = if self.named_condition(a.first()?.as_str()?)? {
                            a.get(1)?
                        } else {
                            a.get(2)?
                        };
                        self.eval(pick)
                    }
                    "Ref" if arg.as_str() == Some("AWS::NoValue") => None,
                    _ => Some(expr.clone()),
                }
            }
            Value::Object(o) => Some(Value::Object(
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), self.eval(v)?)))
                    .collect(),
            )),
            Value::Array(a) => Some(Value::Array(
                a.iter().filter_map(|v| self.eval(v)).collect(),
            )),
            other => Some(other.clone()),
        }
    }

    /// A readable text of an expression: parameters and pseudo parameters substituted, a role's
    /// `Arn` spelled out from its `RoleName`, other resources as `<Logical.Attribute>`.
    pub fn render(&self, expr: &Value) -> String {
        match expr {
            Value::String(s) => s.clone(),
            Value::Array(a) => a
                .iter()
                .map(|v| self.render(v))
                .collect::<Vec<_>>()
                .join(", "),
            Value::Object(o) if o.len() == 1 => {
                let Some((op, arg)) = o.iter().next() else {
                    return String::new();
                };
                match op.as_str() {
                    "Ref" => {
                        let name = arg.as_str().unwrap_or_default();
                        if let Some(p) = self.pseudo(name) {
                            p
                        } else if self.values.contains_key(name) {
                            let unset = self.value(name).is_empty()
                                && self
                                    .unset
                                    .iter()
                                    .any(|u| u == name || u.starts_with(&format!("{name} (")));
                            if unset {
                                format!("<{name}: unset>")
                            } else {
                                self.value(name).to_owned()
                            }
                        } else if self.declared(name) {
                            format!("<{name}: unset>")
                        } else {
                            self.resource_name(name)
                        }
                    }
                    "Fn::GetAtt" => {
                        let a = arg.as_array().cloned().unwrap_or_default();
                        let res = a.first().and_then(Value::as_str).unwrap_or_default();
                        let attr = a.get(1).and_then(Value::as_str).unwrap_or_default();
                        self.attribute(res, attr)
                    }
                    "Fn::Sub" => match arg {
                        Value::String(s) => self.substitute(s, &BTreeMap::new()),
                        Value::Array(a) => {
                            let vars: BTreeMap<String, String> = a
                                .get(1)
                                .and_then(Value::as_object)
                                .map(|m| {
                                    m.iter().map(|(k, v)| (k.clone(), self.render(v))).collect()
                                })
                                .unwrap_or_default();
                            self.substitute(
                                a.first().and_then(Value::as_str).unwrap_or_default(),
                                &vars,
                            )
                        }
                        _ => String::new(),
                    },
                    "Fn::If" => self.eval(expr).map(|v| self.render(&v)).unwrap_or_default(),
                    "Fn::Select" => {
                        let a = arg.as_array().cloned().unwrap_or_default();
                        let list = a.get(1).map(|l| self.render(l)).unwrap_or_default();
                        format!(
                            "<part {} of {list}>",
                            a.first().map(json_text).unwrap_or_default()
                        )
                    }
                    "Fn::Join" => {
                        let a = arg.as_array().cloned().unwrap_or_default();
                        let delim = a.first().and_then(Value::as_str).unwrap_or_default();
                        match a.get(1) {
                            Some(Value::Array(items)) => items
                                .iter()
                                .map(|v| self.render(v))
                                .collect::<Vec<_>>()
                                .join(delim),
                            Some(list) => self.render(list).replace(',', delim),
                            None => String::new(),
                        }
                    }
                    "Fn::Split" => {
                        let a = arg.as_array().cloned().unwrap_or_default();
                        a.get(1).map(|v| self.render(v)).unwrap_or_default()
                    }
                    _ => expr.to_string(),
                }
            }
            other => json_text(other),
        }
    }

    fn declared(&self, name: &str) -> bool {
        self.template
            .get("Parameters")
            .and_then(|p| p.get(name))
            .is_some()
    }

    fn resource(&self, logical: &str) -> Option<&Value> {
        self.template.get("Resources")?.get(logical)
    }

    /// A resource by its physical name when the template gives one.
    fn resource_name(&self, logical: &str) -> String {
        let Some(r) = self.resource(logical) else {
            return format!("<{logical}>");
        };
        let props = r.get("Properties");
        for key in ["RoleName", "FunctionName", "Name", "LogGroupName"] {
            if let Some(n) = props.and_then(|p| p.get(key)) {
                return self.render(n);
            }
        }
        format!("<{logical}>")
    }

    fn attribute(&self, logical: &str, attr: &str) -> String {
        let ty = self
            .resource(logical)
            .and_then(|r| r.get("Type"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let account = self.pseudo("AWS::AccountId").unwrap_or_default();
        let region = self.pseudo("AWS::Region").unwrap_or_default();
        match (ty, attr) {
            ("AWS::IAM::Role", "Arn") => {
                format!(
                    "arn:aws:iam::{account}:role/{}",
                    self.resource_name(logical)
                )
            }
            ("AWS::Lambda::Function", "Arn") => format!(
                "arn:aws:lambda:{region}:{account}:function:{}",
                self.resource_name(logical)
            ),
            ("AWS::Logs::LogGroup", "Arn") => format!(
                "arn:aws:logs:{region}:{account}:log-group:{}:*",
                self.resource_name(logical)
            ),
            _ => format!("<{logical}.{attr}>"),
        }
    }

    fn substitute(&self, template: &str, vars: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let Some(end) = rest[start..].find('}') else {
                out.push_str(&rest[start..]);
                return out;
            };
            let name = &rest[start + 2..start + end];
            let text = if let Some(v) = vars.get(name) {
                v.clone()
            } else if let Some((res, attr)) = name.split_once('.') {
                self.attribute(res, attr)
            } else {
                self.render(&serde_json::json!({ "Ref": name }))
            };
            out.push_str(&text);
            rest = &rest[start + end + 1..];
        }
        out.push_str(rest);
        out
    }

    /// The resources that exist under the parameters (their `Condition` holds).
    pub fn resources(&self) -> Vec<(String, Value)> {
        self.template
            .get("Resources")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(_, r)| {
                r.get("Condition")
                    .and_then(Value::as_str)
                    .is_none_or(|c| self.named_condition(c).unwrap_or(false))
            })
            .filter_map(|(k, r)| Some((k.clone(), self.eval(r)?)))
            .collect()
    }

    fn of_type(&self, ty: &str) -> Vec<(String, Value)> {
        self.resources()
            .into_iter()
            .filter(|(_, r)| r.get("Type").and_then(Value::as_str) == Some(ty))
            .collect()
    }
}

fn is_intrinsic(o: &serde_json::Map<String, Value>) -> bool {
    o.keys()
        .next()
        .is_some_and(|k| k == "Ref" || k == "Condition" || k.starts_with("Fn::"))
}

/// `a/b/../c` as `a/c` (the templates name their zips relative to `deploy/`).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir if out.file_name().is_some_and(|n| n != "..") => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// One statement of a policy, rendered.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Actions.
    pub actions: Vec<String>,
    /// Resources.
    pub resources: Vec<String>,
    /// Conditions, as JSON text (empty when none).
    pub condition: String,
}

fn strings(v: Option<&Value>, r: &Resolved) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().map(|x| r.render(x)).collect(),
        Some(x) => vec![r.render(x)],
        None => vec![],
    }
}

fn statements(doc: &Value) -> Vec<Value> {
    match doc.get("Statement") {
        Some(Value::Array(a)) => a.clone(),
        Some(s) => vec![s.clone()],
        None => vec![],
    }
}

/// A role of the plan: who may assume it, what it may do.
#[derive(Debug, Clone)]
pub struct RolePlan {
    /// Logical id.
    pub logical: String,
    /// ARN (from its `RoleName`).
    pub arn: String,
    /// Principals that may assume it, with their conditions.
    pub trusted: Vec<(String, String)>,
    /// What it may do.
    pub grants: Vec<Grant>,
}

/// A function of the plan.
#[derive(Debug, Clone)]
pub struct FunctionPlan {
    /// Function name.
    pub name: String,
    /// The zip, relative to the template's directory as the template names it.
    pub zip: PathBuf,
    /// Its size, when it is built.
    pub zip_bytes: Option<u64>,
    /// Architectures.
    pub architectures: Vec<String>,
    /// Runtime and handler.
    pub runtime: String,
    /// `TracingConfig.Mode`.
    pub tracing: String,
    /// The execution role's ARN.
    pub role: String,
    /// Environment variable names and values.
    pub env: Vec<(String, String)>,
}

/// Functions of a resolved template.
pub fn functions(r: &Resolved) -> Vec<FunctionPlan> {
    let dir = r.template_path.parent().unwrap_or(Path::new("."));
    r.of_type("AWS::Lambda::Function")
        .into_iter()
        .map(|(_, f)| {
            let p = &f["Properties"];
            let zip = lexical(&dir.join(p.get("Code").and_then(Value::as_str).unwrap_or_default()));
            let env = p
                .pointer("/Environment/Variables")
                .and_then(Value::as_object)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), r.render(v))).collect())
                .unwrap_or_default();
            FunctionPlan {
                name: r.render(&p["FunctionName"]),
                zip_bytes: std::fs::metadata(&zip).ok().map(|m| m.len()),
                zip,
                architectures: strings(p.get("Architectures"), r),
                runtime: format!("{} / {}", r.render(&p["Runtime"]), r.render(&p["Handler"])),
                tracing: p
                    .pointer("/TracingConfig/Mode")
                    .map(|m| r.render(m))
                    .unwrap_or_else(|| "PassThrough".into()),
                role: r.render(&p["Role"]),
                env,
            }
        })
        .collect()
}

/// Roles of a resolved template.
pub fn roles(r: &Resolved) -> Vec<RolePlan> {
    r.of_type("AWS::IAM::Role")
        .into_iter()
        .map(|(logical, role)| {
            let p = &role["Properties"];
            let trusted = statements(&p["AssumeRolePolicyDocument"])
                .iter()
                .flat_map(|s| {
                    let cond = s
                        .get("Condition")
                        .map(|c| condition_text(c, r))
                        .unwrap_or_default();
                    let principals: Vec<String> = s
                        .get("Principal")
                        .and_then(Value::as_object)
                        .into_iter()
                        .flatten()
                        .flat_map(|(_, v)| strings(Some(v), r))
                        .collect();
                    principals.into_iter().map(move |p| (p, cond.clone()))
                })
                .collect();
            let grants = p
                .get("Policies")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|pol| statements(&pol["PolicyDocument"]))
                .map(|s| Grant {
                    actions: strings(s.get("Action"), r),
                    resources: strings(s.get("Resource"), r),
                    condition: s
                        .get("Condition")
                        .map(|c| condition_text(c, r))
                        .unwrap_or_default(),
                })
                .collect();
            RolePlan {
                arn: r.attribute(&logical, "Arn"),
                logical,
                trusted,
                grants,
            }
        })
        .collect()
}

fn condition_text(c: &Value, r: &Resolved) -> String {
    let mut parts = Vec::new();
    for (op, kv) in c.as_object().into_iter().flatten() {
        for (k, v) in kv.as_object().into_iter().flatten() {
            parts.push(format!("{k} {op} {}", r.render(v)));
        }
    }
    parts.join(" and ")
}

/// Resource policies on functions: who may call what.
pub fn permissions(r: &Resolved) -> Vec<String> {
    r.of_type("AWS::Lambda::Permission")
        .into_iter()
        .map(|(_, p)| {
            let p = &p["Properties"];
            let how = match (
                p.get("FunctionUrlAuthType").map(|a| r.render(a)),
                p.get("InvokedViaFunctionUrl").and_then(Value::as_bool),
            ) {
                (Some(a), _) => format!(" through its function URL (AuthType {a})"),
                (None, Some(true)) => " through its function URL".to_owned(),
                _ => String::new(),
            };
            let principal = r.render(&p["Principal"]);
            let who = if principal == "*" {
                "anyone (public: the function verifies the bearer JWT itself)".to_owned()
            } else {
                principal
            };
            format!(
                "{} may {} {}{how}",
                who,
                r.render(&p["Action"]),
                r.render(&p["FunctionName"])
            )
        })
        .collect()
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1_000_000.0)
}

/// The plan, as text.
pub fn plan_text(resolved: &[Resolved]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "tokentrail deploy plan: nothing is created and no AWS call is made.\n"
    );
    for (i, r) in resolved.iter().enumerate() {
        let account = r
            .account_id
            .clone()
            .unwrap_or_else(|| "<account_id unset>".into());
        let _ = writeln!(
            out,
            "{}. {} account {account}: template {}, region {}",
            i + 1,
            r.stack.as_str(),
            r.template_path.display(),
            r.pseudo("AWS::Region").unwrap_or_default()
        );
        let _ = writeln!(out, "   functions");
        for f in functions(r) {
            let size = f
                .zip_bytes
                .map(megabytes)
                .unwrap_or_else(|| "not built (scripts/lambda-build.sh)".into());
            let _ = writeln!(
                out,
                "     {:<24} {}  {size}  {}  {}  X-Ray tracing {}",
                f.name,
                f.zip.display(),
                f.architectures.join(","),
                f.runtime,
                f.tracing
            );
            let exporter = f
                .env
                .iter()
                .find(|(k, _)| k == "OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|(_, v)| format!("OTLP/HTTP to {v}"))
                .or_else(|| {
                    f.env
                        .iter()
                        .find(|(k, _)| k == "TOKENTRAIL_XRAY")
                        .map(|(_, v)| match v.as_str() {
                            "otlp" => "X-Ray's OTLP endpoint (SigV4)".to_owned(),
                            other => format!("X-Ray {other}"),
                        })
                })
                .unwrap_or_else(|| "none".into());
            let _ = writeln!(out, "     {:<24} role {}; spans to {exporter}", "", f.role);
        }
        for (_, rt) in r.of_type("AWS::BedrockAgentCore::Runtime") {
            let p = &rt["Properties"];
            let _ = writeln!(
                out,
                "     {:<24} AgentCore Runtime, image {}; request headers allowed: {}",
                r.render(&p["AgentRuntimeName"]),
                r.render(&p["AgentRuntimeArtifact"]["ContainerConfiguration"]["ContainerUri"]),
                r.render(&p["RequestHeaderConfiguration"]["RequestHeaderAllowlist"])
            );
        }
        for (_, g) in r.of_type("AWS::BedrockAgentCore::Gateway") {
            let p = &g["Properties"];
            let jwt = &p["AuthorizerConfiguration"]["CustomJWTAuthorizer"];
            let _ = writeln!(
                out,
                "   gateway {}: {} inbound auth (discovery {}, clients {}, audience {}, scopes {})",
                r.render(&p["Name"]),
                r.render(&p["AuthorizerType"]),
                r.render(&jwt["DiscoveryUrl"]),
                r.render(&jwt["AllowedClients"]),
                jwt.get("AllowedAudience")
                    .map(|a| r.render(a))
                    .unwrap_or_else(|| "not checked".into()),
                r.render(&jwt["AllowedScopes"])
            );
            for ic in p["InterceptorConfigurations"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let _ = writeln!(
                    out,
                    "     {} interceptor {} (passRequestHeaders {})",
                    r.render(&ic["InterceptionPoints"]),
                    r.render(&ic["Interceptor"]["Lambda"]["Arn"]),
                    r.render(&ic["InputConfiguration"]["PassRequestHeaders"])
                );
            }
        }
        for (_, t) in r.of_type("AWS::BedrockAgentCore::GatewayTarget") {
            let p = &t["Properties"];
            let kind = p["TargetConfiguration"]["Mcp"]
                .as_object()
                .and_then(|m| m.keys().next().cloned())
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "     target {} ({kind}), outbound credential: {}",
                r.render(&p["Name"]),
                if p.get("CredentialProviderConfigurations").is_some() {
                    r.render(&p["CredentialProviderConfigurations"])
                } else {
                    "none: the interceptor's Authorization reaches the target".to_owned()
                }
            );
        }
        let _ = writeln!(out, "   roles and what each may do");
        for role in roles(r) {
            let trusted: Vec<String> = role
                .trusted
                .iter()
                .map(|(p, c)| {
                    if c.is_empty() {
                        p.clone()
                    } else {
                        format!("{p} when {c}")
                    }
                })
                .collect();
            let _ = writeln!(out, "     {}", role.arn);
            let _ = writeln!(out, "       assumed by {}", trusted.join("; "));
            for g in &role.grants {
                let cond = if g.condition.is_empty() {
                    String::new()
                } else {
                    format!(" when {}", g.condition)
                };
                let _ = writeln!(
                    out,
                    "       {} on {}{cond}",
                    g.actions.join(", "),
                    g.resources.join(", ")
                );
            }
        }
        let perms = permissions(r);
        if !perms.is_empty() {
            let _ = writeln!(out, "   resource policies");
            for p in perms {
                let _ = writeln!(out, "     {p}");
            }
        }
        let secrets = r.of_type("AWS::SecretsManager::Secret");
        if !secrets.is_empty() {
            let _ = writeln!(out, "   secrets (no value is in any template)");
            for (_, s) in secrets {
                let p = &s["Properties"];
                let how = if p.get("GenerateSecretString").is_some() {
                    "generated by Secrets Manager"
                } else {
                    "created empty: put its value"
                };
                let _ = writeln!(out, "     {} ({how})", r.render(&p["Name"]));
            }
        }
        let _ = writeln!(out, "   parameters");
        for (name, (value, source)) in &r.values {
            let from = match source {
                Source::Given => String::new(),
                Source::Derived(f) => format!("  (from {f})"),
                Source::Default => "  (default)".into(),
            };
            let _ = writeln!(out, "     {name} = {value}{from}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "cross-account trust");
    let mut any = false;
    for r in resolved {
        for role in roles(r) {
            for (principal, cond) in &role.trusted {
                if principal.starts_with("arn:")
                    && !principal
                        .contains(&format!("::{}:", r.account_id.clone().unwrap_or_default()))
                {
                    any = true;
                    let _ = writeln!(
                        out,
                        "   {principal} may sts:AssumeRole {} ({} account) when {cond}",
                        role.arn,
                        r.stack.as_str()
                    );
                }
            }
        }
        for p in permissions(r) {
            if r.stack == Stack::Central {
                any = true;
                let _ = writeln!(out, "   {p} (only the role above can take that identity)");
            }
        }
    }
    if !any {
        let _ = writeln!(
            out,
            "   none: the passthrough pattern deploys the workload account only"
        );
    }
    let unset: Vec<String> = resolved
        .iter()
        .flat_map(|r| {
            r.unset
                .iter()
                .map(move |u| format!("{}: {u}", r.stack.as_str()))
        })
        .collect();
    let _ = writeln!(out);
    if unset.is_empty() {
        let _ = writeln!(out, "parameters still unset: none");
    } else {
        let _ = writeln!(out, "parameters still unset ({}):", unset.len());
        for u in unset {
            let _ = writeln!(out, "   {u}");
        }
    }
    out
}

/// Everything that stops a deploy (malformed values, then unset ones).
pub fn refusals(resolved: &[Resolved], deploying: bool) -> Vec<String> {
    let mut out: Vec<String> = resolved
        .iter()
        .flat_map(|r| {
            r.malformed
                .iter()
                .map(move |m| format!("{}: {m}", r.stack.as_str()))
        })
        .collect();
    if deploying {
        out.extend(resolved.iter().flat_map(|r| {
            r.unset
                .iter()
                .filter(|u| {
                    // The broker's URL is the central stack's output: known once it is deployed.
                    !(r.stack == Stack::Workload
                        && u.starts_with("BrokerUrl")
                        && resolved.iter().any(|c| c.stack == Stack::Central))
                })
                .map(move |u| format!("{}: {u} is required and unset", r.stack.as_str()))
        }));
        for r in resolved {
            for f in functions(r) {
                if f.zip_bytes.is_none() {
                    out.push(format!(
                        "{}: {} is not built ({} is missing): run scripts/lambda-build.sh",
                        r.stack.as_str(),
                        f.name,
                        f.zip.display()
                    ));
                }
            }
        }
    }
    out
}

/// `tokentrail deploy`.
pub fn run(params_path: &Path, templates: &Path, plan: bool, sam: &str) -> Result<()> {
    let params = Params::load(params_path)?;
    if params.pattern != "passthrough" && params.pattern != "broker" {
        bail!(
            "pattern = `{}`: must be `passthrough` or `broker`",
            params.pattern
        );
    }
    let stacks = params.stacks();
    let mut resolved = Vec::new();
    for s in &stacks {
        resolved.push(resolve(templates, *s, &params, &BTreeMap::new())?);
    }
    if plan {
        print!("{}", plan_text(&resolved));
        let bad = refusals(&resolved, false);
        if !bad.is_empty() {
            bail!(
                "{} parameter value(s) would be refused:\n  {}",
                bad.len(),
                bad.join("\n  ")
            );
        }
        return Ok(());
    }
    let bad = refusals(&resolved, true);
    if !bad.is_empty() {
        bail!(
            "not deploying: {} problem(s) (`tokentrail deploy --plan` shows the whole plan):\n  {}",
            bad.len(),
            bad.join("\n  ")
        );
    }
    if Process::new(sam).arg("--version").output().is_err() {
        bail!(
            "not deploying: the AWS SAM CLI (`{sam}`) is not installed; `pip install aws-sam-cli` \
             (or give its path with --sam)"
        );
    }
    let mut outputs = BTreeMap::new();
    for stack in stacks {
        let r = resolve(templates, stack, &params, &outputs)?;
        let bad = refusals(std::slice::from_ref(&r), true);
        if !bad.is_empty() {
            bail!("not deploying {}: {}", stack.as_str(), bad.join("; "));
        }
        let account = params.account(stack);
        let name = account
            .stack_name
            .clone()
            .unwrap_or_else(|| stack.default_stack_name());
        eprintln!(
            "==> {}: sam deploy of {} as stack {name} in {} (account {})",
            stack.as_str(),
            r.template_path.display(),
            r.region,
            r.account_id.clone().unwrap_or_default()
        );
        let mut cmd = Process::new(sam);
        cmd.args(deploy_args(&r, &name, account.profile.as_deref()));
        let status = cmd.status().with_context(|| format!("cannot run {sam}"))?;
        if !status.success() {
            bail!(
                "sam deploy of the {} stack failed ({status}); its events are above",
                stack.as_str()
            );
        }
        outputs = stack_outputs(sam, &name, &r.region, account.profile.as_deref())?;
        for (k, v) in &outputs {
            println!("{}: {k} = {v}", stack.as_str());
        }
    }
    println!(
        "deployed. Put the secrets' values (see the outputs) with `aws secretsmanager \
         put-secret-value`, then send a request (README: Deploy) and find its trace in X-Ray."
    );
    Ok(())
}

/// The `sam deploy` arguments for a resolved stack.
pub fn deploy_args(r: &Resolved, stack_name: &str, profile: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = [
        "deploy",
        "--template-file",
        &r.template_path.to_string_lossy(),
        "--stack-name",
        stack_name,
        "--region",
        &r.region,
        "--capabilities",
        "CAPABILITY_NAMED_IAM",
        "--resolve-s3",
        "--no-confirm-changeset",
        "--no-fail-on-empty-changeset",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    if let Some(p) = profile {
        args.push("--profile".into());
        args.push(p.to_owned());
    }
    let overrides: Vec<String> = r
        .values
        .iter()
        .filter(|(_, (_, s))| *s != Source::Default)
        .map(|(k, (v, _))| {
            // SAM splits overrides on whitespace unless the value is quoted.
            if v.chars()
                .any(|c| c.is_whitespace() || c == '"' || c == '\'')
            {
                format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    if !overrides.is_empty() {
        args.push("--parameter-overrides".into());
        args.extend(overrides);
    }
    args
}

fn stack_outputs(
    sam: &str,
    stack_name: &str,
    region: &str,
    profile: Option<&str>,
) -> Result<BTreeMap<String, String>> {
    let mut cmd = Process::new(sam);
    cmd.args([
        "list",
        "stack-outputs",
        "--stack-name",
        stack_name,
        "--region",
        region,
        "--output",
        "json",
    ]);
    if let Some(p) = profile {
        cmd.args(["--profile", p]);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {sam} list stack-outputs"))?;
    if !out.status.success() {
        bail!(
            "cannot read the outputs of stack {stack_name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let list: Vec<Value> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("sam list stack-outputs of {stack_name} did not answer JSON"))?;
    Ok(list
        .iter()
        .filter_map(|o| {
            Some((
                o.get("OutputKey")?.as_str()?.to_owned(),
                o.get("OutputValue")?.as_str()?.to_owned(),
            ))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn templates() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
    }

    /// The complete parameters the end-to-end tests use too, for `pattern`.
    fn params(pattern: &str) -> Params {
        let mut p = Params::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/deploy-complete.toml"),
        )
        .expect("params");
        p.pattern = pattern.to_owned();
        p
    }

    fn resolved(pattern: &str) -> Vec<Resolved> {
        let p = params(pattern);
        p.stacks()
            .into_iter()
            .map(|s| resolve(&templates(), s, &p, &BTreeMap::new()).expect("resolves"))
            .collect()
    }

    /// Actions with no resource-level permissions: `*` is the narrowest resource there is.
    const ACCOUNT_WIDE: [&str; 5] = [
        "xray:PutTraceSegments",
        "xray:PutTelemetryRecords",
        "xray:PutSpans",
        "xray:PutSpansForIndexing",
        "ecr:GetAuthorizationToken",
    ];

    #[test]
    fn no_policy_grants_a_wildcard_action_or_a_wildcard_resource_where_a_narrower_one_exists() {
        for pattern in ["passthrough", "broker"] {
            for r in resolved(pattern) {
                // Every statement of the template, whichever branch of an Fn::If it is in.
                let text = r.template.to_string();
                assert!(!text.contains("\"Action\":\"*\""), "{}", r.stack.as_str());
                let roles = roles(&r);
                assert!(!roles.is_empty());
                for role in roles {
                    for g in &role.grants {
                        for a in &g.actions {
                            assert!(
                                !a.contains('*'),
                                "{}: {} may {a}: a wildcard action",
                                r.stack.as_str(),
                                role.arn
                            );
                        }
                        if g.resources
                            .iter()
                            .any(|res| res == "*" || res.ends_with(":*:*"))
                        {
                            for a in &g.actions {
                                assert!(
                                    ACCOUNT_WIDE.contains(&a.as_str()),
                                    "{}: {} may {a} on `*`, though {a} can be scoped to a resource",
                                    r.stack.as_str(),
                                    role.arn
                                );
                            }
                        }
                    }
                    for (principal, _) in &role.trusted {
                        assert_ne!(principal, "*", "{} trusts anyone", role.arn);
                    }
                }
            }
        }
    }

    #[test]
    fn the_gateway_may_invoke_the_interceptor_only_and_the_broker_reads_one_secret() {
        let all = resolved("broker");
        let workload = all.iter().find(|r| r.stack == Stack::Workload).expect("w");
        let gateway = roles(workload)
            .into_iter()
            .find(|r| r.logical == "GatewayRole")
            .expect("gateway role");
        let invokes: Vec<&Grant> = gateway
            .grants
            .iter()
            .filter(|g| g.actions.iter().any(|a| a.starts_with("lambda:")))
            .collect();
        assert_eq!(invokes.len(), 1);
        assert_eq!(
            invokes[0].resources,
            vec!["arn:aws:lambda:eu-west-1:111122223333:function:tokentrail-interceptor"]
        );
        let central = all.iter().find(|r| r.stack == Stack::Central).expect("c");
        let broker = roles(central)
            .into_iter()
            .find(|r| r.logical == "BrokerFunctionRole")
            .expect("broker role");
        let secret_grants: Vec<&Grant> = broker
            .grants
            .iter()
            .filter(|g| g.actions.iter().any(|a| a.starts_with("secretsmanager:")))
            .collect();
        assert_eq!(secret_grants.len(), 1);
        assert_eq!(
            secret_grants[0].actions,
            vec!["secretsmanager:GetSecretValue"]
        );
        assert_eq!(
            secret_grants[0].resources,
            vec!["tokentrail/orders-api/client"]
        );
        // The caller role: only the workload's interceptor role, with the ExternalId.
        let caller = roles(central)
            .into_iter()
            .find(|r| r.logical == "BrokerCallerRole")
            .expect("caller role");
        assert_eq!(caller.trusted.len(), 1);
        let (principal, cond) = &caller.trusted[0];
        assert_eq!(principal, "arn:aws:iam::111122223333:root");
        assert!(
            cond.contains("sts:ExternalId StringEquals tokentrail-ext-1"),
            "{cond}"
        );
        assert!(
            cond.contains(
                "aws:PrincipalArn ArnEquals arn:aws:iam::111122223333:role/tokentrail-interceptor"
            ),
            "{cond}"
        );
        // The interceptor may assume exactly that role, in the broker pattern only.
        let interceptor = |r: &Resolved| {
            roles(r)
                .into_iter()
                .find(|r| r.logical == "InterceptorRole")
                .expect("interceptor role")
        };
        let assume = |role: &RolePlan| -> Vec<String> {
            role.grants
                .iter()
                .filter(|g| g.actions.iter().any(|a| a == "sts:AssumeRole"))
                .flat_map(|g| g.resources.clone())
                .collect()
        };
        assert_eq!(
            assume(&interceptor(workload)),
            vec!["arn:aws:iam::444455556666:role/tokentrail-broker-caller"]
        );
        let passthrough = resolved("passthrough");
        assert!(assume(&interceptor(&passthrough[0])).is_empty());
    }

    #[test]
    fn no_template_holds_a_secret_value() {
        for r in resolved("broker") {
            for (name, s) in r.of_type("AWS::SecretsManager::Secret") {
                assert!(
                    s["Properties"].get("SecretString").is_none(),
                    "{}: {name} has a SecretString",
                    r.stack.as_str()
                );
            }
            for f in functions(&r) {
                for (k, _) in &f.env {
                    assert!(
                        !k.ends_with("_SECRET") && k != "TOKENTRAIL_FINGERPRINT_KEY",
                        "{}: {} is given {k} in its configuration",
                        r.stack.as_str(),
                        f.name
                    );
                }
            }
        }
    }

    #[test]
    fn every_function_is_arm64_provided_al2023_bootstrap_with_active_tracing() {
        for r in resolved("broker") {
            for f in functions(&r) {
                assert_eq!(f.architectures, vec!["arm64"], "{}", f.name);
                assert_eq!(f.runtime, "provided.al2023 / bootstrap", "{}", f.name);
                assert_eq!(f.tracing, "Active", "{}", f.name);
                assert!(
                    f.zip
                        .ends_with(format!("target/lambda/{}/bootstrap.zip", f.name)),
                    "{}",
                    f.zip.display()
                );
                assert!(f.env.iter().any(|(k, _)| k == "TOKENTRAIL_XRAY"));
            }
        }
    }

    #[test]
    fn the_gateway_target_carries_the_targets_own_openapi_description() {
        let r = &resolved("passthrough")[0];
        let target = r
            .of_type("AWS::BedrockAgentCore::GatewayTarget")
            .pop()
            .expect("target")
            .1;
        let inline = target
            .pointer("/Properties/TargetConfiguration/Mcp/OpenApiSchema/InlinePayload/Fn::Sub/0")
            .and_then(Value::as_str)
            .expect("inline payload");
        let mut deployed: Value = serde_json::from_str(inline).expect("JSON");
        assert_eq!(
            deployed["servers"][0]["url"], "https://${TargetHost}",
            "the target's function URL host"
        );
        deployed.as_object_mut().expect("object").remove("servers");
        let own: Value = serde_json::from_str(
            &std::fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../handlers/target/openapi.json"),
            )
            .expect("openapi.json"),
        )
        .expect("JSON");
        assert_eq!(
            deployed, own,
            "deploy/workload.json's OpenAPI differs from the target's"
        );
    }

    #[test]
    fn values_are_checked_against_the_templates_constraints() {
        let mut p = params("broker");
        p.workload.parameters.insert(
            "DiscoveryUrl".into(),
            toml::Value::String("http://idp.example.com/jwks".into()),
        );
        p.central.account_id = Some("4444".into());
        p.workload
            .parameters
            .insert("TraceExport".into(), toml::Value::String("jaeger".into()));
        let w = resolve(&templates(), Stack::Workload, &p, &BTreeMap::new()).expect("w");
        let c = resolve(&templates(), Stack::Central, &p, &BTreeMap::new()).expect("c");
        let all = refusals(&[c, w], false).join("\n");
        assert!(
            all.contains("DiscoveryUrl = `http://idp.example.com/jwks`: does not match"),
            "{all}"
        );
        assert!(
            all.contains("account_id = `4444`: not a 12-digit AWS account id"),
            "{all}"
        );
        assert!(
            all.contains(
                "TraceExport = `jaeger`: must be one of xray-otlp, xray-daemon, collector"
            ),
            "{all}"
        );
    }

    #[test]
    fn the_broker_pattern_rule_names_what_it_needs() {
        let mut p = params("broker");
        p.workload.parameters.remove("InterceptorAudiences");
        p.central.account_id = None;
        let w = resolve(&templates(), Stack::Workload, &p, &BTreeMap::new()).expect("w");
        let unset = w.unset.join("\n");
        assert!(
            unset.contains("InterceptorAudiences (Pattern=broker needs InterceptorAudiences)"),
            "{unset}"
        );
        assert!(
            unset.contains("CentralAccountId (Pattern=broker needs CentralAccountId)"),
            "{unset}"
        );
        // In passthrough neither is needed.
        let mut p = params("passthrough");
        p.workload.parameters.remove("InterceptorAudiences");
        let w = resolve(&templates(), Stack::Workload, &p, &BTreeMap::new()).expect("w");
        assert!(w.unset.is_empty(), "{:?}", w.unset);
    }

    #[test]
    fn sam_gets_every_value_that_is_not_a_default() {
        let r = &resolved("passthrough")[0];
        let args = deploy_args(r, "tokentrail-workload", Some("work"));
        let joined = args.join(" ");
        assert!(joined.contains("--stack-name tokentrail-workload --region eu-west-1"));
        assert!(joined.contains("--capabilities CAPABILITY_NAMED_IAM --resolve-s3"));
        assert!(joined.contains("--profile work"));
        assert!(args.contains(&"GatewayAllowedClients=tokentrail-agent".to_owned()));
        assert!(args.contains(&"Pattern=passthrough".to_owned()));
        assert!(
            !joined.contains("TargetAudience="),
            "defaults are left to the template"
        );
        let mut p = params("passthrough");
        p.workload.parameters.insert(
            "TargetReadScope".into(),
            toml::Value::String("orders:read orders:\"all\"".into()),
        );
        let r = resolve(&templates(), Stack::Workload, &p, &BTreeMap::new()).expect("w");
        let args = deploy_args(&r, "s", None);
        let quoted = String::from("TargetReadScope=\"orders:read orders:\\\"all\\\"\"");
        assert!(args.contains(&quoted), "{args:?}");
    }
}
