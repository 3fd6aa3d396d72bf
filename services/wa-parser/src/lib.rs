//! ISP WhatsApp/SMS lead parser (DESIGN.md section 1, SPEC 3.2).

pub mod parse;
