//! The connect page in headless Chromium, driven over WebDriver (fantoccini, chromedriver), against
//! the functions (`local-api`, the paths `make dev` serves) and the CRM emulators that
//! `tests/connect/run.sh` starts: Salesforce and Zoho through their consent pages, HubSpot,
//! Pipedrive and Freshsales by token; then `test-connection` and `sync-customer` on each. A refused
//! consent, a wrong token, an expired link, a reused link, a forged state and a tampered callback
//! each end in a clear page with nothing stored, and no secret reaches a page, a log line or a
//! URL. One browser session throughout.
//!
//! Ignored in a plain `cargo test`: `tests/connect/run.sh` (run by `make test`) starts what it
//! needs and runs it with `--ignored`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crm_sync::connect::fields::fields;
use crm_sync::domain::CrmType;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// What the script started, from its environment.
struct Env {
    /// `http://127.0.0.1:PORT/lambda-url`
    api: String,
    api_key: String,
    driver: String,
    data_dir: PathBuf,
    logs: Vec<PathBuf>,
    screenshot: Option<PathBuf>,
    crm: std::collections::HashMap<&'static str, String>,
}

impl Env {
    fn from_env() -> Self {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is not set: run tests/connect/run.sh, which starts the functions, the emulators and chromedriver")
            })
        };
        let crm = ["hubspot", "salesforce", "pipedrive", "zoho", "freshsales"]
            .into_iter()
            .map(|crm| (crm, var(&format!("CONNECT_TEST_{}", crm.to_uppercase()))))
            .collect();
        Env {
            api: var("CONNECT_TEST_API"),
            api_key: var("CONNECT_TEST_API_KEY"),
            driver: var("CONNECT_TEST_DRIVER"),
            data_dir: PathBuf::from(var("CONNECT_TEST_DATA_DIR")),
            logs: var("CONNECT_TEST_LOGS")
                .split_whitespace()
                .map(PathBuf::from)
                .collect(),
            screenshot: std::env::var("CONNECT_TEST_SCREENSHOT")
                .ok()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            crm,
        }
    }
}

/// The browser, and everything it was shown, for the no-secret check.
struct Browser {
    client: Client,
    seen: Vec<String>,
}

impl Browser {
    async fn start(driver: &str) -> Self {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": std::env::var("CONNECT_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                // As root in CI: no sandbox. No network but loopback: no background traffic.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--disable-quic", "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync", "--window-size=900,1000"],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(driver)
            .await
            .expect("chromedriver starts a Chromium session");
        Browser {
            client,
            seen: Vec::new(),
        }
    }

    /// The page now shown (its source) and its address, kept for the no-secret check.
    async fn page(&mut self) -> String {
        let source = self.client.source().await.unwrap();
        let url = self.client.current_url().await.unwrap().to_string();
        self.seen.push(source.clone());
        self.seen.push(url);
        source
    }

    async fn goto(&mut self, url: &str) -> String {
        self.client.goto(url).await.unwrap();
        self.page().await
    }

    async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    /// Clicks, then waits for the page it leads to (every click here leaves the page, through
    /// redirects at times).
    async fn click(&mut self, css: &str) -> String {
        let before = self.url().await;
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let ready = self
                .client
                .execute("return document.readyState", vec![])
                .await
                .ok()
                .and_then(|v| v.as_str().map(str::to_string));
            if self.url().await != before && ready.as_deref() == Some("complete") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "clicking {css} led nowhere"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.page().await
    }

    async fn type_into(&self, name: &str, text: &str) {
        self.client
            .find(Locator::Css(&format!("[name=\"{name}\"]")))
            .await
            .unwrap_or_else(|e| panic!("no field {name}: {e}"))
            .send_keys(text)
            .await
            .unwrap();
    }

    async fn choose(&self, name: &str, value: &str) {
        self.client
            .find(Locator::Css(&format!("select[name=\"{name}\"]")))
            .await
            .unwrap()
            .select_by_value(value)
            .await
            .unwrap();
    }

    /// The names of the form's visible fields (not the hidden `crm`).
    async fn field_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for element in self
            .client
            .find_all(Locator::Css("form input:not([type=hidden]), form select"))
            .await
            .unwrap()
        {
            names.insert(element.attr("name").await.unwrap().unwrap_or_default());
        }
        names
    }

    async fn submit(&mut self) -> String {
        self.click("form button[type=submit]").await
    }
}

fn heading(page: &str) -> String {
    let start = page
        .find("<h1")
        .and_then(|i| page[i..].find('>').map(|j| i + j + 1));
    match start {
        Some(start) => page[start..]
            .split("</h1>")
            .next()
            .unwrap_or_default()
            .replace("&#39;", "'"),
        None => String::new(),
    }
}

struct Api {
    env: Env,
    http: reqwest::Client,
}

impl Api {
    async fn post(&self, function: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/{function}/", self.env.api))
            .header("x-api-key", &self.env.api_key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A new link for `id`, with the CRM and settings fixed as given.
    async fn link(&self, id: &str, crm: Option<&str>, settings: Value) -> String {
        let mut body = json!({"connectionId": id, "settings": settings});
        if let Some(crm) = crm {
            body["crmType"] = json!(crm);
        }
        let (status, link) = self.post("connect-sessions", body).await;
        assert_eq!(status, 201, "{link}");
        link["connectUrl"].as_str().unwrap().to_string()
    }

    fn connection(&self, id: &str) -> Option<Value> {
        let path = self
            .env
            .data_dir
            .join("connections")
            .join(format!("{id}.json"));
        std::fs::read(path)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap())
    }

    /// `test-connection` answers ok and `sync-customer` creates a contact.
    async fn works(&self, id: &str) {
        let (status, tested) = self
            .post("test-connection", json!({"connectionId": id}))
            .await;
        assert_eq!(
            (status, &tested["ok"]),
            (200, &json!(true)),
            "{id}: {tested}"
        );
        let (status, synced) = self
            .post(
                "sync-customer",
                json!({"connectionId": id, "customer": {"firstName": "Ada", "lastName": "Lovelace",
                       "email": format!("ada+{id}@example.com"), "phone": "+14155550123"}}),
            )
            .await;
        assert_eq!(status, 200, "{id}: {synced}");
        assert_eq!(synced["status"], "created", "{id}: {synced}");
        println!(
            "  {id}: test-connection ok ({}), sync-customer created {}",
            tested["account"], synced["crmId"]
        );
    }
}

/// The fields the page should ask for `crm` when the link fixes `fixed`.
fn asked(crm: CrmType, fixed: &[&str]) -> BTreeSet<String> {
    fields(crm)
        .iter()
        .filter(|f| f.asked().is_some() && (f.credential || !fixed.contains(&f.name)))
        .map(|f| f.name.to_string())
        .collect()
}

#[tokio::test]
#[ignore = "needs the functions, the emulators and chromedriver: tests/connect/run.sh (make test) runs it"]
async fn a_person_connects_five_crms_in_a_browser_and_every_refusal_ends_in_a_clear_page() {
    let env = Env::from_env();
    let mut browser = Browser::start(&env.driver).await;
    let api = Api {
        http: crm_sync::transport::http_client().clone(),
        env,
    };
    let crm = |name: &str| api.env.crm[name].clone();
    let mut typed_secrets: Vec<String> = Vec::new();
    let mut links: Vec<String> = Vec::new();

    // ---- HubSpot by token: a wrong token first, then the right one; the link works once.
    let link = api
        .link(
            "acme-hubspot",
            None,
            json!({"baseUrl": crm("hubspot"), "defaultCountry": "US"}),
        )
        .await;
    links.push(link.clone());
    let list = browser.goto(&link).await;
    assert!(
        !browser.url().await.contains("session="),
        "the token left the address bar"
    );
    assert_eq!(heading(&list), "Connect your CRM");
    if let Some(path) = &api.env.screenshot {
        let png = browser.client.screenshot().await.unwrap();
        if let Some(folder) = path.parent().filter(|f| !f.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder).unwrap();
        }
        std::fs::write(path, png).unwrap();
        println!("  screenshot of the connect page: {}", path.display());
    }
    browser.click("a[href=\"?crm=hubspot\"]").await;
    assert_eq!(
        browser.field_names().await,
        asked(CrmType::Hubspot, &["baseUrl", "defaultCountry"]),
        "exactly the fields platforms declares, less those the link fixes"
    );
    browser.type_into("accessToken", "pat-na1-wrong-7a1c").await;
    typed_secrets.push("pat-na1-wrong-7a1c".into());
    let refused = browser.submit().await;
    assert_eq!(heading(&refused), "HubSpot didn't accept the connection");
    assert!(refused.contains("Nothing was stored."));
    assert!(api.connection("acme-hubspot").is_none());
    println!("  HubSpot: a wrong token ends in \"{}\"", heading(&refused));
    browser.click("a.back").await;
    browser.type_into("accessToken", "demo-hubspot-token").await;
    typed_secrets.push("demo-hubspot-token".into());
    browser
        .type_into("defaultTimezone", "America/Chicago")
        .await;
    let connected = browser.submit().await;
    assert_eq!(heading(&connected), "HubSpot is connected");
    assert_eq!(
        api.connection("acme-hubspot").unwrap()["settings"]["defaultTimezone"],
        "America/Chicago"
    );
    let reused = browser.goto(&link).await;
    assert_eq!(heading(&reused), "This link was already used");
    println!(
        "  HubSpot: connected; the link opened again ends in \"{}\"",
        heading(&reused)
    );

    // ---- Pipedrive and Freshsales by token, the CRM fixed by the link.
    for (id, name, fields) in [
        (
            "acme-pipedrive",
            "pipedrive",
            [
                ("apiToken", "demo-pipedrive-token"),
                ("companyDomain", "crm-sync-demo"),
            ],
        ),
        (
            "acme-freshsales",
            "freshsales",
            [
                ("apiKey", "demo-freshsales-key"),
                ("bundleAlias", "crm-sync-demo"),
            ],
        ),
    ] {
        let link = api
            .link(
                id,
                Some(name),
                json!({"baseUrl": crm(name), "defaultTimezone": "America/New_York"}),
            )
            .await;
        links.push(link.clone());
        let form = browser.goto(&link).await;
        let crm_type: CrmType = name.parse().unwrap();
        assert_eq!(
            browser.field_names().await,
            asked(crm_type, &["baseUrl", "defaultTimezone"]),
            "{name}"
        );
        assert!(form.contains("Already set for you"));
        for (field, value) in fields {
            browser.type_into(field, value).await;
        }
        typed_secrets.push(fields[0].1.to_string());
        let connected = browser.submit().await;
        assert!(
            heading(&connected).ends_with("is connected"),
            "{name}: {connected}"
        );
        println!("  {name}: \"{}\"", heading(&connected));
    }

    // ---- Salesforce: refused consent, a forged state, a tampered code, then allowed.
    let link = api
        .link(
            "acme-salesforce",
            Some("salesforce"),
            json!({"loginUrl": crm("salesforce"), "defaultTimezone": "America/Los_Angeles"}),
        )
        .await;
    links.push(link.clone());
    let form = browser.goto(&link).await;
    assert_eq!(heading(&form), "Connect Salesforce");
    assert!(browser.field_names().await.is_subset(&asked(
        CrmType::Salesforce,
        &["loginUrl", "defaultTimezone"]
    )));
    let consent = browser.submit().await;
    assert!(
        browser
            .url()
            .await
            .starts_with(&format!("{}/services/oauth2/authorize", crm("salesforce")))
    );
    assert!(browser.url().await.contains("code_challenge_method=S256"));
    assert!(consent.contains("Salesforce (emulated)"));
    let denied = browser.click("#deny").await;
    assert_eq!(heading(&denied), "You didn't allow access in Salesforce");
    assert!(denied.contains("Nothing was stored."));
    println!(
        "  Salesforce: a refused consent ends in \"{}\"",
        heading(&denied)
    );

    browser.click("a.back").await;
    browser.submit().await;
    let callback = format!("{}/connect-callback/", api.env.api);
    let forged = browser
        .goto(&format!(
            "{callback}?code=any-code&state=forged-state-value"
        ))
        .await;
    assert_eq!(heading(&forged), "This sign-in doesn't belong to your link");
    println!(
        "  Salesforce: a forged state ends in \"{}\"",
        heading(&forged)
    );

    browser.click("a.back").await;
    browser.submit().await;
    // The consent is given outside the browser, and the code in the answer altered before the
    // browser takes it to the callback.
    let consent_url = url::Url::parse(&browser.url().await).unwrap();
    let mut decision: Vec<(String, String)> = consent_url.query_pairs().into_owned().collect();
    decision.push(("decision".into(), "allow".into()));
    crm_sync::transport::install_crypto_provider();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let answer = no_redirects
        .post(format!(
            "{}{}",
            consent_url.origin().ascii_serialization(),
            consent_url.path()
        ))
        .form(&decision)
        .send()
        .await
        .unwrap();
    let back = answer.headers()["location"]
        .to_str()
        .unwrap()
        .replace("code=code-", "code=code-tampered-");
    let tampered = browser.goto(&back).await;
    assert_eq!(
        heading(&tampered),
        "Salesforce didn't accept the connection"
    );
    assert!(api.connection("acme-salesforce").is_none());
    println!(
        "  Salesforce: a tampered callback ends in \"{}\"",
        heading(&tampered)
    );

    browser.click("a.back").await;
    browser.submit().await;
    let connected = browser.click("#allow").await;
    assert_eq!(heading(&connected), "Salesforce is connected");
    let stored = api.connection("acme-salesforce").unwrap();
    assert_eq!(stored["settings"]["defaultTimezone"], "America/Los_Angeles");
    println!("  Salesforce: \"{}\"", heading(&connected));

    // ---- Zoho CRM: chosen from the list, the data centre chosen on the page.
    let link = api
        .link("acme-zoho", None, json!({"accountsUrl": crm("zoho"), "baseUrl": crm("zoho"), "defaultLeadCompany": "Walk-in"}))
        .await;
    links.push(link.clone());
    browser.goto(&link).await;
    browser.click("a[href=\"?crm=zoho\"]").await;
    assert!(browser.field_names().await.contains("dataCenter"));
    browser.choose("dataCenter", "eu").await;
    browser.submit().await;
    assert!(
        browser
            .url()
            .await
            .starts_with(&format!("{}/oauth/v2/auth", crm("zoho")))
    );
    let connected = browser.click("#allow").await;
    assert_eq!(heading(&connected), "Zoho CRM is connected");
    assert_eq!(
        api.connection("acme-zoho").unwrap()["settings"]["dataCenter"],
        "eu"
    );
    println!("  Zoho CRM: \"{}\"", heading(&connected));

    // ---- An expired link: its session's expiry moved into the past.
    let link = api.link("acme-expired", None, json!({})).await;
    links.push(link.clone());
    let token = url::Url::parse(&link)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "session")
        .unwrap()
        .1
        .into_owned();
    let id = crm_sync::store::sha256_hex(token.as_bytes());
    let file = api
        .env
        .data_dir
        .join("connect-sessions")
        .join(format!("{id}.json"));
    let mut session: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    session["expiresAt"] = json!((chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339());
    std::fs::write(&file, session.to_string()).unwrap();
    let expired = browser.goto(&link).await;
    assert_eq!(heading(&expired), "This link has expired");
    assert!(api.connection("acme-expired").is_none());
    println!("  an expired link ends in \"{}\"", heading(&expired));

    // ---- Each new connection works.
    for id in [
        "acme-hubspot",
        "acme-pipedrive",
        "acme-freshsales",
        "acme-salesforce",
        "acme-zoho",
    ] {
        api.works(id).await;
    }
    browser.client.close().await.unwrap();

    // ---- No secret in any page, address, redirect or log line.
    let mut secrets: Vec<String> = typed_secrets;
    for id in [
        "acme-hubspot",
        "acme-pipedrive",
        "acme-freshsales",
        "acme-salesforce",
        "acme-zoho",
    ] {
        let stored = api.connection(id).unwrap();
        // An OAuth client id is no secret: every authorize URL carries it.
        for (name, value) in stored["credentials"].as_object().unwrap() {
            if name != "clientId" {
                secrets.push(value.as_str().unwrap().to_string());
            }
        }
    }
    let tokens: Vec<String> = links
        .iter()
        .map(|l| {
            url::Url::parse(l)
                .unwrap()
                .query_pairs()
                .find(|(k, _)| k == "session")
                .unwrap()
                .1
                .into_owned()
        })
        .collect();
    let mut logs = String::new();
    for path in &api.env.logs {
        logs.push_str(&std::fs::read_to_string(path).unwrap_or_default());
    }
    let mut checked = 0;
    for secret in secrets.iter().filter(|s| s.len() >= 8) {
        for shown in &browser.seen {
            assert!(
                !shown.contains(secret.as_str()),
                "a secret reached a page or an address:\n{shown}"
            );
        }
        assert!(!logs.contains(secret.as_str()), "a secret reached a log");
        checked += 1;
    }
    for token in &tokens {
        // The link itself is the one address that carries its token.
        for shown in browser
            .seen
            .iter()
            .filter(|s| !s.starts_with("http") || !s.contains("session="))
        {
            assert!(
                !shown.contains(token.as_str()),
                "a link token reached a page:\n{shown}"
            );
        }
        assert!(!logs.contains(token.as_str()), "a link token reached a log");
    }
    println!(
        "  no secret ({checked} values) and no link token in {} pages and addresses or {} bytes of logs",
        browser.seen.len(),
        logs.len()
    );
}
