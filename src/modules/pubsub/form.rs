//! The few XEP-0004 data forms pubsub uses: node configuration and publish-options.

use crate::xml::Element;

pub const NS: &str = "jabber:x:data";

/// Fields and values a form may carry here; more is refused as a bad request.
const MAX_FIELDS: usize = 64;
const MAX_VALUES: usize = 128;

/// A parsed form: its type and fields in document order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataForm {
    /// `submit`, `cancel`, `form` or `result`.
    pub kind: String,
    pub form_type: Option<String>,
    pub fields: Vec<(String, Vec<String>)>,
}

impl DataForm {
    /// `None` if it is not a data form or exceeds the bounds.
    pub fn parse(x: &Element) -> Option<DataForm> {
        if !x.is("x", NS) {
            return None;
        }
        let mut form = DataForm {
            kind: x.attr("type").unwrap_or("form").to_string(),
            ..DataForm::default()
        };
        for field in x.elements().filter(|f| f.is("field", NS)) {
            let var = field.attr("var")?.to_string();
            let values: Vec<String> = field
                .elements()
                .filter(|v| v.is("value", NS))
                .map(Element::text)
                .collect();
            if values.len() > MAX_VALUES || form.fields.len() >= MAX_FIELDS {
                return None;
            }
            if var == "FORM_TYPE" {
                form.form_type = values.first().cloned();
            }
            form.fields.push((var, values));
        }
        Some(form)
    }

    pub fn value(&self, var: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(v, _)| v == var)
            .and_then(|(_, vals)| vals.first())
            .map(String::as_str)
    }
}

pub fn field(var: &str, kind: &str, values: &[String]) -> Element {
    let mut f = Element::new("field", NS)
        .with_attr("var", var)
        .with_attr("type", kind);
    for v in values {
        f.push_child(Element::new("value", NS).with_text(v.clone()));
    }
    f
}
