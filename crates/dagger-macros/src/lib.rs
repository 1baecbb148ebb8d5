//! Procedural macros of dagger: `spawn!` and `delayed!`. Use them through the `dagger` crate,
//! which documents them.
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, Ident, Token};

/// Most arguments one call may take.
const MAX_ARGS: usize = 32;

struct OptionPair {
    key: Ident,
    value: Expr,
}

impl Parse for OptionPair {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let key: Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        Ok(OptionPair { key, value })
    }
}

/// `f(args..)`, optionally followed by `?`, then optionally `; key = value, ..`.
struct CallSpec {
    func: Expr,
    args: Vec<Expr>,
    fallible: bool,
    options: Vec<OptionPair>,
}

impl Parse for CallSpec {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let expr: Expr = input.parse()?;
        let (call, fallible) = match expr {
            Expr::Try(t) => (*t.expr, true),
            other => (other, false),
        };
        let (func, args) =
            match call {
                Expr::Call(c) => (*c.func, c.args.into_iter().collect::<Vec<_>>()),
                Expr::MethodCall(m) => return Err(syn::Error::new_spanned(
                    m,
                    "expected a function call like `f(a, b)`; for a method call, spawn a closure: \
                     `dagger::spawn(move || x.method(..))`",
                )),
                other => {
                    return Err(syn::Error::new_spanned(
                        other,
                        "expected a function call like `f(a, b)` (optionally followed by `?` and \
                     `; name = \"..\"` options)",
                    ))
                }
            };
        if args.len() > MAX_ARGS {
            return Err(syn::Error::new_spanned(
                &args[MAX_ARGS],
                format!("at most {MAX_ARGS} arguments are supported; pass a tuple or a struct"),
            ));
        }
        let mut options = Vec::new();
        if input.peek(Token![;]) {
            input.parse::<Token![;]>()?;
            let pairs: Punctuated<OptionPair, Token![,]> = Punctuated::parse_terminated(input)?;
            options = pairs.into_iter().collect();
        } else if !input.is_empty() {
            return Err(input.error("expected `;` followed by options like `name = \"load\"`"));
        }
        Ok(CallSpec {
            func,
            args,
            fallible,
            options,
        })
    }
}

impl CallSpec {
    fn name(&self) -> String {
        match &self.func {
            Expr::Path(p) => p
                .path
                .segments
                .iter()
                .map(|s| s.ident.to_string())
                .collect::<Vec<_>>()
                .join("::"),
            _ => "closure".to_string(),
        }
    }

    fn options(&self) -> TokenStream2 {
        if self.options.is_empty() {
            return quote!(::core::option::Option::None);
        }
        let mut base = quote!(::dagger::Options::new());
        let mut calls = Vec::new();
        for OptionPair { key, value } in &self.options {
            if key == "options" {
                base = quote!((#value));
            } else {
                calls.push(quote!(.#key(#value)));
            }
        }
        quote!(::core::option::Option::Some(#base #(#calls)*))
    }

    /// The body of the task: fetch every input, then call. Each input is bound with the span
    /// of its argument, so a type mismatch points at the argument that causes it.
    fn body(&self, func: &Ident, args: &[Ident]) -> TokenStream2 {
        let inputs: Vec<Ident> = self
            .args
            .iter()
            .enumerate()
            .map(|(i, e)| format_ident!("__dagger_x{}", i, span = e.span()))
            .collect();
        let fetches = self.args.iter().zip(args).zip(&inputs).map(|((e, a), x)| {
            quote_spanned!(e.span()=>
                #[allow(clippy::let_unit_value)]
                let #x = ::dagger::__private::Arg::get(&mut #a)?;
            )
        });
        let call = quote!(#func(#(#inputs),*));
        let result = if self.fallible {
            quote!(::dagger::__private::fallible(#call))
        } else {
            quote!(::dagger::__private::infallible(#call))
        };
        quote!({ #(#fetches)* #result })
    }
}

fn idents(prefix: &str, n: usize) -> Vec<Ident> {
    (0..n)
        .map(|i| format_ident!("__dagger_{}{}", prefix, i, span = Span::mixed_site()))
        .collect()
}

/// Spawns a call as a task; see the `dagger` crate.
#[proc_macro]
pub fn spawn(input: TokenStream) -> TokenStream {
    let spec = syn::parse_macro_input!(input as CallSpec);
    let name = spec.name();
    let func = &spec.func;
    let exprs = &spec.args;
    let n = exprs.len();
    let vals = idents("v", n);
    let tags = idents("t", n);
    let args = idents("a", n);
    let opts = spec.options();
    let call = spec.body(&format_ident!("__dagger_f"), &args);
    quote!({
        #[allow(unused_imports)]
        use ::dagger::__private::{ViaDep as _, ViaValue as _};
        let __dagger_f = #func;
        #( #[allow(clippy::let_unit_value)] let #vals = #exprs; )*
        #( let #tags = (&&::dagger::__private::Probe(&#vals)).__dagger_tag(); )*
        #( #[allow(unused_mut)] let mut #args = #tags.wrap(#vals); )*
        let __dagger_infos: [::dagger::__private::ArgInfo; #n] =
            [#(::dagger::__private::Arg::info(&#args)),*];
        ::dagger::__private::spawn_call(
            #name,
            ::dagger::__private::fn_id(&__dagger_f),
            #opts,
            &__dagger_infos,
            move || -> ::core::result::Result<_, ::dagger::BoxError> #call,
        )
    })
    .into()
}

/// Builds a lazy task (a `Thunk`) from a call; see the `dagger` crate.
#[proc_macro]
pub fn delayed(input: TokenStream) -> TokenStream {
    let spec = syn::parse_macro_input!(input as CallSpec);
    let name = spec.name();
    let func = &spec.func;
    let exprs = &spec.args;
    let n = exprs.len();
    let vals = idents("v", n);
    let tags = idents("t", n);
    let inputs = idents("i", n);
    let caps = idents("c", n);
    let args = idents("a", n);
    let idx: Vec<usize> = (0..n).collect();
    let opts = spec.options();
    let call = spec.body(&format_ident!("__dagger_g"), &args);
    quote!({
        #[allow(unused_imports)]
        use ::dagger::__private::{ViaDep as _, ViaValue as _};
        let __dagger_f = #func;
        let __dagger_fid = ::dagger::__private::fn_id(&__dagger_f);
        let __dagger_opts: ::core::option::Option<::dagger::Options> = #opts;
        #( #[allow(clippy::let_unit_value)] let #vals = #exprs; )*
        #( let #tags = (&&::dagger::__private::Probe(&#vals)).__dagger_tag(); )*
        #( let (#inputs, #caps) = #tags.capture(#vals); )*
        ::dagger::__private::delayed(
            #name,
            ::std::vec![#(#inputs),*],
            move |__dagger_inputs: &[::std::vec::Vec<&::dagger::__private::ErasedTask>]| {
                #( #[allow(unused_mut)] let mut #args = ::dagger::__private::Capture::instantiate(&#caps, &__dagger_inputs[#idx]); )*
                let __dagger_infos: [::dagger::__private::ArgInfo; #n] =
                    [#(::dagger::__private::Arg::info(&#args)),*];
                let __dagger_g = ::core::clone::Clone::clone(&__dagger_f);
                ::dagger::__private::spawn_call(
                    #name,
                    __dagger_fid,
                    ::core::clone::Clone::clone(&__dagger_opts),
                    &__dagger_infos,
                    move || -> ::core::result::Result<_, ::dagger::BoxError> #call,
                )
            },
        )
    })
    .into()
}
