//! The test harness: what the end-to-end tests build on.
//!
//! - `lab`: network namespaces, links, a public network with a VIP (the one
//!   lab of the repository, `src/lab/net.rs`: compiled into the tests here and
//!   into `twinfs lab`, which the demo and the benches use);
//! - `util`: tempdirs, bounded waits, a single mounted node, tree manifests,
//!   a seeded RNG, the root/FUSE prerequisites;
//! - `apache`: the one writer of the lab's Apache configs (`src/lab/apache.rs`,
//!   also behind `twinfs lab apache-conf`);
//! - `site`: the product's Apache site writer for both servers serving
//!   (`src/apache.rs`, behind `twinfs apache-conf`), which `apache` wraps;
//! - `http`: the one HTTP client of the tests and the scripts
//!   (`src/lab/http.rs`, also behind `twinfs lab get|poll`);
//! - `pair`: a replicated pair of `twinfs run` nodes in a lab;
//! - `web`: a private Apache, the HTTP client of the tests, a poller that
//!   plays the user in front of the site.

#[path = "../../src/lab/apache.rs"]
pub(crate) mod apache;
#[path = "../../src/lab/http.rs"]
pub(crate) mod http;
#[path = "../../src/lab/net.rs"]
pub(crate) mod lab;
pub(crate) mod pair;
#[path = "../../src/apache.rs"]
pub(crate) mod site;
pub(crate) mod util;
pub(crate) mod web;
