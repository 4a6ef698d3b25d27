//! Senders Microsoft accepts (reference §6): with SMTP AUTH or Graph the mailbox is the sender, and any
//! other address needs SendAs. A device's own address ("scanner@") then fails at the end of DATA (5.7.60 /
//! 5.2.252). With `sender_rewrite = "mailbox"` the envelope sender and the From header become the mailbox,
//! and the original From is kept in Reply-To so replies still reach the device's owner.
//!
//! The header fixes avoid Microsoft's 5.7.512 / 5.1.20: a missing From is added, several From fields are
//! merged into one, and a display name holding an "@" is quoted.

/// The rewritten message: one `From: "<name>" <mailbox>` field, `Reply-To` with the original From unless
/// the message has one.
pub fn to_mailbox(message: &[u8], original_sender: &str, mailbox: &str) -> Vec<u8> {
    let (fields, body) = split(message);
    let froms: Vec<&Field> = fields.iter().filter(|f| f.name.eq_ignore_ascii_case("from")).collect();
    let original_from = froms.first().map(|f| f.value.trim().to_owned());
    let name = original_from
        .as_deref()
        .map(display_name)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| original_sender.to_owned());
    let has_reply_to = fields.iter().any(|f| f.name.eq_ignore_ascii_case("reply-to"));
    let mut out = Vec::with_capacity(message.len() + 128);
    out.extend_from_slice(format!("From: {} <{mailbox}>\r\n", quote(&name)).as_bytes());
    if !has_reply_to {
        let reply_to = match &original_from {
            Some(v) if v.contains('@') => fix_display_name(v),
            _ if !original_sender.is_empty() => format!("<{original_sender}>"),
            _ => String::new(),
        };
        if !reply_to.is_empty() {
            out.extend_from_slice(format!("Reply-To: {reply_to}\r\n").as_bytes());
        }
    }
    for f in fields.iter().filter(|f| !f.name.eq_ignore_ascii_case("from")) {
        out.extend_from_slice(f.raw);
    }
    out.extend_from_slice(body);
    out
}

/// Header fixes without a rewrite: a missing From gets the envelope sender; an unquoted "@" in the From
/// display name is quoted. Returns `None` when nothing needed fixing.
pub fn fix_from(message: &[u8], sender: &str) -> Option<Vec<u8>> {
    let (fields, body) = split(message);
    let froms: Vec<&Field> = fields.iter().filter(|f| f.name.eq_ignore_ascii_case("from")).collect();
    let new_from = match froms.as_slice() {
        [] if !sender.is_empty() => format!("<{sender}>"),
        [only] => {
            let fixed = fix_display_name(only.value.trim());
            if fixed == only.value.trim() {
                return None;
            }
            fixed
        }
        _ => return None,
    };
    let mut out = Vec::with_capacity(message.len() + 64);
    out.extend_from_slice(format!("From: {new_from}\r\n").as_bytes());
    for f in fields.iter().filter(|f| !f.name.eq_ignore_ascii_case("from")) {
        out.extend_from_slice(f.raw);
    }
    out.extend_from_slice(body);
    Some(out)
}

struct Field<'a> {
    name: String,
    /// Unfolded value.
    value: String,
    /// The field as written, folding and CRLF included.
    raw: &'a [u8],
}

/// Header fields and the rest (the empty line and the body).
fn split(message: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let end = message[pos..].windows(2).position(|w| w == b"\r\n").map_or(message.len(), |p| pos + p + 2);
        let line = &message[pos..end];
        if line == b"\r\n" {
            break;
        }
        if (line.starts_with(b" ") || line.starts_with(b"\t"))
            && let Some(last) = fields.last_mut()
        {
            let start = last.raw.as_ptr() as usize - message.as_ptr() as usize;
            last.raw = &message[start..end];
            last.value.push(' ');
            last.value.push_str(String::from_utf8_lossy(line).trim());
            pos = end;
            continue;
        }
        let text = String::from_utf8_lossy(line);
        let Some((name, value)) = text.split_once(':') else {
            break; // not a header: the body starts here (a message without the empty line)
        };
        fields.push(Field { name: name.trim().to_owned(), value: value.trim().to_owned(), raw: line });
        pos = end;
    }
    (fields, &message[pos..])
}

/// The display name of a single mailbox (`"Name" <a@b>` → `Name`), empty if none.
fn display_name(value: &str) -> String {
    match value.rfind('<') {
        Some(i) => value[..i].trim().trim_matches('"').trim().to_owned(),
        None => String::new(),
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `scanner@x.com <scanner@x.com>` → `"scanner@x.com" <scanner@x.com>`; anything else unchanged.
fn fix_display_name(value: &str) -> String {
    let name = match value.rfind('<') {
        Some(i) => value[..i].trim(),
        None => return value.to_owned(),
    };
    if name.is_empty() || name.starts_with('"') || !name.contains('@') {
        return value.to_owned();
    }
    let addr = &value[value.rfind('<').expect("checked")..];
    format!("{} {addr}", quote(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_the_original_in_reply_to() {
        let msg =
            b"From: Scanner 3F <scanner3@contoso.com>\r\nTo: <alice@contoso.com>\r\nSubject: scan\r\n\r\nbody\r\n";
        let out = String::from_utf8(to_mailbox(msg, "scanner3@contoso.com", "relay@contoso.com")).unwrap();
        assert_eq!(
            out,
            "From: \"Scanner 3F\" <relay@contoso.com>\r\nReply-To: Scanner 3F <scanner3@contoso.com>\r\n\
             To: <alice@contoso.com>\r\nSubject: scan\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn rewrite_merges_several_froms_and_keeps_an_existing_reply_to() {
        let msg = b"From: a@contoso.com\r\nFrom: b@contoso.com\r\nReply-To: <owner@contoso.com>\r\n\r\nx";
        let out = String::from_utf8(to_mailbox(msg, "a@contoso.com", "relay@contoso.com")).unwrap();
        assert_eq!(out, "From: \"a@contoso.com\" <relay@contoso.com>\r\nReply-To: <owner@contoso.com>\r\n\r\nx");
    }

    #[test]
    fn header_fixes() {
        let msg = b"To: <alice@contoso.com>\r\n\r\nx";
        assert_eq!(
            fix_from(msg, "scanner@contoso.com").unwrap(),
            b"From: <scanner@contoso.com>\r\nTo: <alice@contoso.com>\r\n\r\nx"
        );
        let msg = b"From: scanner@contoso.com <scanner@contoso.com>\r\n\r\nx";
        assert_eq!(
            fix_from(msg, "scanner@contoso.com").unwrap(),
            b"From: \"scanner@contoso.com\" <scanner@contoso.com>\r\n\r\nx"
        );
        assert!(fix_from(b"From: \"A\" <a@b.c>\r\n\r\nx", "a@b.c").is_none());
    }
}
