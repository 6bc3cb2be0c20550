//! XEP-0157 contact addresses: a `serverinfo` form in the server's disco#info, from
//! `[contact]` in the config (only when some address is configured).

use crate::registry::{Module, Registrar};
use crate::xml::Element;

const DATA: &str = "jabber:x:data";
pub const FORM_TYPE: &str = "http://jabber.org/network/serverinfo";

pub struct ContactAddresses;

impl Module for ContactAddresses {
    fn name(&self) -> &'static str {
        "contact"
    }
    fn register(self: Box<Self>, r: &mut Registrar<'_>) {
        let c = &r.config().contact;
        let fields = [
            ("abuse-addresses", &c.abuse),
            ("admin-addresses", &c.admin),
            ("feedback-addresses", &c.feedback),
            ("sales-addresses", &c.sales),
            ("security-addresses", &c.security),
            ("status-addresses", &c.status),
            ("support-addresses", &c.support),
        ];
        if fields.iter().all(|(_, v)| v.is_empty()) {
            return;
        }
        let field = |var: &str, kind: Option<&str>, values: &[String]| {
            let mut f = Element::new("field", DATA).with_attr("var", var);
            if let Some(kind) = kind {
                f.set_attr("type", kind);
            }
            for v in values {
                f.push_child(Element::new("value", DATA).with_text(v.clone()));
            }
            f
        };
        let mut form = Element::new("x", DATA)
            .with_attr("type", "result")
            .with_child(field("FORM_TYPE", Some("hidden"), &[FORM_TYPE.to_string()]));
        for (var, values) in fields {
            if !values.is_empty() {
                form.push_child(field(var, None, values));
            }
        }
        r.server_info_form(form);
    }
}
