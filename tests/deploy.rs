//! `tokentrail deploy`, as a user runs it: `--plan` with no AWS account, the refusals on missing
//! or malformed parameters, and the deploy itself against a stand-in for the AWS SAM CLI that
//! records each call and answers `list stack-outputs` as SAM does.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{bin, failed, succeeded, tempdir};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const COMPLETE: &str = include_str!("fixtures/deploy-complete.toml");

fn deploy(dir: &Path, params: &str, args: &[&str], templates: &Path, sam: &str) -> Output {
    let path = dir.join("params.toml");
    std::fs::write(&path, params).unwrap();
    Command::new(bin())
        .arg("deploy")
        .arg("--params")
        .arg(&path)
        .arg("--templates")
        .arg(templates)
        .args(args)
        .env("TOKENTRAIL_SAM", sam)
        // No AWS account: nothing may reach for credentials.
        .env("AWS_ACCESS_KEY_ID", "")
        .env("AWS_SECRET_ACCESS_KEY", "")
        .env("AWS_CONFIG_FILE", dir.join("no-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-credentials"))
        .output()
        .unwrap()
}

#[test]
fn the_example_parameters_plan_with_no_account_and_name_what_is_unset() {
    let dir = tempdir("deploy-plan");
    let example = std::fs::read_to_string(repo().join("deploy/params.example.toml")).unwrap();
    let run = deploy(
        &dir,
        &example,
        &["--plan"],
        &repo().join("deploy"),
        "sam-not-needed",
    );
    let out = succeeded(&run);
    assert!(out.starts_with("tokentrail deploy plan: nothing is created and no AWS call is made."));
    assert!(
        out.contains("1. central account <account_id unset>: template"),
        "{out}"
    );
    assert!(
        out.contains("2. workload account <account_id unset>: template"),
        "{out}"
    );
    for hop in ["agent", "interceptor", "broker", "target"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("tokentrail-{hop} ")))
            .unwrap_or_else(|| panic!("no line for {hop}:\n{out}"));
        assert!(
            line.contains(&format!("target/lambda/tokentrail-{hop}/bootstrap.zip")),
            "{line}"
        );
        assert!(
            line.contains("arm64  provided.al2023 / bootstrap  X-Ray tracing Active"),
            "{line}"
        );
    }
    assert!(out.contains("parameters still unset ("), "{out}");
    for unset in [
        "central: ExternalId",
        "central: IdpTokenEndpoint",
        "central: [central] account_id",
        "workload: DiscoveryUrl",
        "workload: AgentClientId",
        "workload: [workload] account_id",
    ] {
        assert!(
            out.contains(unset),
            "{unset} is not listed as unset:\n{out}"
        );
    }
}

#[test]
fn a_complete_plan_shows_every_role_and_the_trust_between_the_accounts() {
    let dir = tempdir("deploy-plan-full");
    let out = succeeded(&deploy(
        &dir,
        COMPLETE,
        &["--plan"],
        &repo().join("deploy"),
        "sam",
    ));
    assert!(out.contains(
        "   arn:aws:iam::111122223333:root may sts:AssumeRole arn:aws:iam::444455556666:role/tokentrail-broker-caller (central account) when aws:PrincipalArn ArnEquals arn:aws:iam::111122223333:role/tokentrail-interceptor and sts:ExternalId StringEquals tokentrail-ext-1"
    ), "{out}");
    assert!(out.contains(
        "arn:aws:iam::444455556666:role/tokentrail-broker-caller may lambda:InvokeFunctionUrl tokentrail-broker through its function URL (AuthType AWS_IAM)"
    ), "{out}");
    assert!(out.contains(
        "       lambda:InvokeFunction on arn:aws:lambda:eu-west-1:111122223333:function:tokentrail-interceptor"
    ), "{out}");
    assert!(
        out.contains("       secretsmanager:GetSecretValue on tokentrail/orders-api/client"),
        "{out}"
    );
    assert!(out.contains(
        "     REQUEST interceptor arn:aws:lambda:eu-west-1:111122223333:function:tokentrail-interceptor (passRequestHeaders true)"
    ), "{out}");
    assert!(
        out.contains("CentralAccountId = 444455556666  (from [central] account_id)"),
        "{out}"
    );
    // The broker's URL is the central stack's output: the only thing left once all is given.
    assert!(
        out.contains("parameters still unset (1):\n   workload: BrokerUrl"),
        "{out}"
    );
}

#[test]
fn malformed_or_missing_parameters_are_refused_with_the_reason() {
    let dir = tempdir("deploy-refuse");
    let templates = repo().join("deploy");
    let bad = COMPLETE
        .replace(
            "https://idp.example.com/.well-known/openid-configuration",
            "http://idp.example.com/jwks.json",
        )
        .replace("444455556666", "4444-5555")
        .replace("eu-west-1", "Ireland");
    let err = failed(&deploy(&dir, &bad, &["--plan"], &templates, "sam"));
    assert!(err.contains("parameter value(s) would be refused"), "{err}");
    assert!(err.contains("workload: DiscoveryUrl = `http://idp.example.com/jwks.json`: does not match ^https://.+/\\.well-known/openid-configuration$"), "{err}");
    assert!(
        err.contains("central: [central] account_id = `4444-5555`: not a 12-digit AWS account id"),
        "{err}"
    );
    assert!(
        err.contains("region = `Ireland`: not an AWS region such as eu-west-1"),
        "{err}"
    );

    let missing = COMPLETE.replace("AgentClientId = \"tokentrail-agent\"\n", "");
    let err = failed(&deploy(&dir, &missing, &[], &templates, "sam"));
    assert!(err.contains("not deploying:"), "{err}");
    assert!(
        err.contains("workload: AgentClientId is required and unset"),
        "{err}"
    );

    let unknown = COMPLETE.replace(
        "[workload.parameters]",
        "[workload.parameters]\nDiscoveryURL = \"x\"",
    );
    let err = failed(&deploy(&dir, &unknown, &["--plan"], &templates, "sam"));
    assert!(err.contains("DiscoveryURL: "), "{err}");
    assert!(err.contains("has no such parameter"), "{err}");

    let err = failed(&deploy(
        &dir,
        "pattern = \"both\"\n",
        &["--plan"],
        &templates,
        "sam",
    ));
    assert!(
        err.contains("pattern = `both`: must be `passthrough` or `broker`"),
        "{err}"
    );
    let run = Command::new(bin())
        .args(["deploy", "--plan", "--params"])
        .arg(dir.join("nowhere.toml"))
        .output()
        .unwrap();
    let err = failed(&run);
    assert!(err.contains("no deploy parameters at"), "{err}");
    assert!(err.contains("cp deploy/params.example.toml"), "{err}");
}

/// The templates and four stand-in zips, where the templates look for them.
fn workspace_with_zips(dir: &Path) -> PathBuf {
    let deploy = dir.join("deploy");
    std::fs::create_dir_all(&deploy).unwrap();
    for t in ["central.json", "workload.json"] {
        std::fs::copy(repo().join("deploy").join(t), deploy.join(t)).unwrap();
    }
    for hop in ["agent", "interceptor", "broker", "target"] {
        let d = dir.join(format!("target/lambda/tokentrail-{hop}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("bootstrap.zip"), b"PK\x05\x06stand-in").unwrap();
    }
    deploy
}

#[test]
fn deploy_runs_sam_per_account_in_order_and_feeds_the_brokers_url_to_the_workload() {
    let dir = tempdir("deploy-sam");
    let templates = workspace_with_zips(&dir);
    let log = dir.join("sam.log");
    let sam = dir.join("sam");
    support::write_executable(
        &sam,
        &format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$1 $2\" in\n  'list stack-outputs') echo '[{{\"OutputKey\": \"BrokerUrl\", \"OutputValue\": \"https://abc.lambda-url.eu-west-1.on.aws/\"}}]' ;;\nesac\n",
            log.display()
        ),
    );
    let run = deploy(&dir, COMPLETE, &[], &templates, sam.to_str().unwrap());
    let out = succeeded(&run);
    assert!(
        out.contains("central: BrokerUrl = https://abc.lambda-url.eu-west-1.on.aws/"),
        "{out}"
    );
    let calls: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let deploys: Vec<&String> = calls.iter().filter(|c| c.starts_with("deploy ")).collect();
    assert_eq!(deploys.len(), 2, "{calls:#?}");
    assert!(deploys[0].contains("central.json --stack-name tokentrail-central --region eu-west-1 --capabilities CAPABILITY_NAMED_IAM --resolve-s3"), "{}", deploys[0]);
    assert!(
        deploys[0].contains("--profile central-admin"),
        "{}",
        deploys[0]
    );
    assert!(
        deploys[0].contains("WorkloadAccountId=111122223333"),
        "{}",
        deploys[0]
    );
    assert!(
        deploys[1].contains("workload.json --stack-name tokentrail-workload"),
        "{}",
        deploys[1]
    );
    assert!(
        deploys[1].contains("BrokerUrl=https://abc.lambda-url.eu-west-1.on.aws/"),
        "{}",
        deploys[1]
    );
    assert!(deploys[1].contains("Pattern=broker"), "{}", deploys[1]);

    // Without SAM: a clear refusal, before anything is deployed.
    let err = failed(&deploy(&dir, COMPLETE, &[], &templates, "/nonexistent/sam"));
    assert!(
        err.contains("the AWS SAM CLI (`/nonexistent/sam`) is not installed"),
        "{err}"
    );
}

fn lint(cfn_lint: &Path, template: &Path) -> Output {
    Command::new(cfn_lint)
        .arg("--")
        .arg(template)
        .output()
        .unwrap()
}

/// cfn-lint's bundled schemas include `AWS::BedrockAgentCore::*` (Gateway with its
/// `InterceptorConfigurations`, GatewayTarget, Runtime): the templates pass, and a misspelt
/// AgentCore property is caught, so the check is known to look at those resources.
#[test]
fn the_templates_pass_cfn_lint_and_a_wrong_agentcore_property_does_not() {
    let Some(cl) = support::tool("TOKENTRAIL_CFN_LINT", "cfn-lint").map(PathBuf::from) else {
        return;
    };
    for t in ["central.json", "workload.json"] {
        let run = lint(&cl, &repo().join("deploy").join(t));
        assert!(
            run.status.success(),
            "cfn-lint refuses deploy/{t}:\n{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let dir = tempdir("cfn-lint");
    let template: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("deploy/workload.json")).unwrap(),
    )
    .unwrap();
    let wrong: [(&str, &str, &str); 3] = [
        (
            "/Resources/Gateway/Properties/InterceptorConfigurations/0/InputConfiguration",
            "PassRequestHeaders",
            "PassRequestHeader",
        ),
        (
            "/Resources/OrdersTarget/Properties/TargetConfiguration/Mcp",
            "OpenApiSchema",
            "OpenApi",
        ),
        (
            "/Resources/AgentRuntime/Properties/RequestHeaderConfiguration",
            "RequestHeaderAllowlist",
            "RequestHeaderAllowList",
        ),
    ];
    for (at, right, misspelt) in wrong {
        let mut t = template.clone();
        let obj = t.pointer_mut(at).and_then(|v| v.as_object_mut()).unwrap();
        let v = obj.remove(right).unwrap();
        obj.insert(misspelt.to_owned(), v);
        let path = dir.join(format!("{misspelt}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(&t).unwrap()).unwrap();
        let run = lint(&cl, &path);
        let out = String::from_utf8_lossy(&run.stdout);
        assert!(!run.status.success(), "cfn-lint let {misspelt} through");
        assert!(
            out.contains(misspelt),
            "cfn-lint did not name {misspelt}:\n{out}"
        );
    }
}
