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
const MAX_ARGS: usize = 16;

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
        CallSpec::from_expr(expr, input)
    }
}

/// `spawn!` input: `f(args..)..`, or `region, f(args..)..` for a task of a datadeps region.
struct SpawnInput {
    region: Option<Expr>,
    call: CallSpec,
}

impl Parse for SpawnInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let first: Expr = input.parse()?;
        if input.peek(Token![,]) {
            input.parse::<Token![,]>()?;
            let expr: Expr = input.parse()?;
            return Ok(SpawnInput {
                region: Some(first),
                call: CallSpec::from_expr(expr, input)?,
            });
        }
        Ok(SpawnInput {
            region: None,
            call: CallSpec::from_expr(first, input)?,
        })
    }
}

impl CallSpec {
    fn from_expr(expr: Expr, input: ParseStream<'_>) -> syn::Result<Self> {
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

/// A task of a datadeps region: `region, f(args..)`.
fn spawn_in_region(region: &Expr, spec: &CallSpec) -> syn::Result<TokenStream2> {
    if spec.fallible {
        return Err(syn::Error::new_spanned(
            &spec.func,
            "`?` is not for region tasks: a region task's value is its function's value, \
             `Result` included",
        ));
    }
    let func = &spec.func;
    let exprs = &spec.args;
    let n = exprs.len();
    let vals = idents("v", n);
    let args = idents("a", n);
    let opts = spec.options();
    Ok(quote!({
        #[allow(unused_imports)]
        use ::dagger::__private::{
            DdViaAccess as _, DdViaLocal as _, DdViaTask as _, DdViaVal as _,
        };
        let __dagger_dd = #region;
        let __dagger_f = #func;
        #( #[allow(clippy::let_unit_value)] let #vals = #exprs; )*
        #( let #args = (&&::dagger::__private::DdProbe(&#vals)).__dagger_dd_tag().wrap(#vals); )*
        let __dagger_args = (#(#args,)*);
        (&&::dagger::__private::DdCallProbe(&__dagger_f, &__dagger_args))
            .__dagger_dd_how()
            .spawn(__dagger_dd, #opts, __dagger_f, __dagger_args)
    }))
}

/// Spawns a call as a task; see the `dagger` crate.
#[proc_macro]
pub fn spawn(input: TokenStream) -> TokenStream {
    let SpawnInput { region, call: spec } = syn::parse_macro_input!(input as SpawnInput);
    if let Some(region) = region {
        return match spawn_in_region(&region, &spec) {
            Ok(t) => t.into(),
            Err(e) => e.to_compile_error().into(),
        };
    }
    let name = spec.name();
    let func = &spec.func;
    let exprs = &spec.args;
    let n = exprs.len();
    let vals = idents("v", n);
    let tags = idents("t", n);
    let args = idents("a", n);
    let opts = spec.options();
    let fallible = spec.fallible;
    let call = spec.body(&format_ident!("__dagger_f"), &args);
    quote!({
        #[allow(unused_imports)]
        use ::dagger::__private::{ViaDep as _, ViaValue as _};
        let __dagger_f = #func;
        #( #[allow(clippy::let_unit_value)] let #vals = #exprs; )*
        #( let #tags = (&&::dagger::__private::Probe(&#vals)).__dagger_tag(); )*
        #( let #args = #tags.wrap(#vals); )*
        ::dagger::__private::spawn_call(
            #name,
            ::dagger::__private::fn_id(&__dagger_f),
            #fallible,
            #opts,
            (#(#args,)*),
            move |(#(mut #args,)*)| -> ::core::result::Result<_, ::dagger::BoxError> #call,
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
    let fallible = spec.fallible;
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
                #( let #args = ::dagger::__private::Capture::instantiate(&#caps, &__dagger_inputs[#idx]); )*
                let __dagger_g = ::core::clone::Clone::clone(&__dagger_f);
                ::dagger::__private::spawn_call(
                    #name,
                    __dagger_fid,
                    #fallible,
                    ::core::clone::Clone::clone(&__dagger_opts),
                    (#(#args,)*),
                    move |(#(mut #args,)*)| -> ::core::result::Result<_, ::dagger::BoxError> #call,
                )
            },
        )
    })
    .into()
}

/// One `instance(T = u32, ..)` of a generic task function.
struct Instance(Vec<(Ident, syn::Type)>);

impl Parse for Instance {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let kw: Ident = input.parse()?;
        if kw != "instance" {
            return Err(syn::Error::new_spanned(
                kw,
                "expected `instance(T = Type, ..)`; #[dagger::task] takes only instance lists",
            ));
        }
        let content;
        syn::parenthesized!(content in input);
        let mut pairs = Vec::new();
        while !content.is_empty() {
            let name: Ident = content.parse()?;
            content.parse::<Token![=]>()?;
            let ty: syn::Type = content.parse()?;
            pairs.push((name, ty));
            if content.is_empty() {
                break;
            }
            content.parse::<Token![,]>()?;
        }
        Ok(Instance(pairs))
    }
}

/// Replaces generic type parameters by concrete types.
struct Substitute<'a>(&'a [(Ident, syn::Type)]);

impl syn::visit_mut::VisitMut for Substitute<'_> {
    fn visit_type_mut(&mut self, ty: &mut syn::Type) {
        if let syn::Type::Path(p) = ty {
            if p.qself.is_none() && p.path.segments.len() == 1 {
                let seg = &p.path.segments[0];
                if seg.arguments.is_empty() {
                    if let Some((_, concrete)) = self.0.iter().find(|(n, _)| *n == seg.ident) {
                        *ty = concrete.clone();
                        return;
                    }
                }
            }
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }
}

/// How a task function takes one parameter.
enum ParamShape {
    /// `T`: the argument is cloned out of the stored value.
    Owned(syn::Type),
    /// `&T` (with `&[T]` stored as `Vec<T>`, `&str` as `String`).
    Borrowed(syn::Type),
    /// `&mut T` (with `&mut [T]` stored as `Vec<T>`): only datadeps regions pass these.
    BorrowedMut(syn::Type),
    /// `Vec<T>`: one `Vec<T>` value, or a collection of `T` values.
    OwnedVec(syn::Type),
    /// `Vec<&T>`: a collection of `T` values, borrowed.
    BorrowedVec(syn::Type),
    /// `BlockRef<'_, T>` / `BlockMut<'_, T>` (a block of a datadeps matrix): stored as the
    /// block's elements (`BlockBuf<T>`); only datadeps regions pass these.
    Block(syn::Type, bool),
}

/// `BlockRef<'_, T>` or `BlockMut<'_, T>`: the element type and whether it is `BlockMut`.
fn block_elem(ty: &syn::Type) -> Option<(syn::Type, bool)> {
    let syn::Type::Path(p) = ty else { return None };
    let seg = p.path.segments.last()?;
    let mutable = match seg.ident.to_string().as_str() {
        "BlockRef" => false,
        "BlockMut" => true,
        _ => return None,
    };
    let syn::PathArguments::AngleBracketed(a) = &seg.arguments else {
        return None;
    };
    let mut types = a.args.iter().filter_map(|g| match g {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    match (types.next(), types.next()) {
        (Some(t), None) => Some((t, mutable)),
        _ => None,
    }
}

fn vec_elem(ty: &syn::Type) -> Option<&syn::Type> {
    let syn::Type::Path(p) = ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "Vec" {
        return None;
    }
    match &seg.arguments {
        syn::PathArguments::AngleBracketed(a) if a.args.len() == 1 => match &a.args[0] {
            syn::GenericArgument::Type(t) => Some(t),
            _ => None,
        },
        _ => None,
    }
}

fn param_shape(ty: &syn::Type) -> syn::Result<ParamShape> {
    match ty {
        syn::Type::Reference(r) => {
            let inner = &*r.elem;
            if r.mutability.is_some() {
                if let syn::Type::Path(p) = inner {
                    if p.path.is_ident("str") {
                        return Err(syn::Error::new_spanned(
                            ty,
                            "`&mut str` cannot be a task parameter; take `&mut String`",
                        ));
                    }
                }
                return Ok(ParamShape::BorrowedMut(match inner {
                    syn::Type::Slice(s) => {
                        let elem = &s.elem;
                        syn::parse_quote!(::std::vec::Vec<#elem>)
                    }
                    other => other.clone(),
                }));
            }
            Ok(ParamShape::Borrowed(match inner {
                syn::Type::Slice(s) => {
                    let elem = &s.elem;
                    syn::parse_quote!(::std::vec::Vec<#elem>)
                }
                syn::Type::Path(p) if p.path.is_ident("str") => {
                    syn::parse_quote!(::std::string::String)
                }
                other => other.clone(),
            }))
        }
        syn::Type::ImplTrait(_) => Err(syn::Error::new_spanned(
            ty,
            "task functions need concrete parameter types, not `impl Trait`",
        )),
        other if block_elem(other).is_some() => {
            let (elem, mutable) = block_elem(other).expect("checked");
            Ok(ParamShape::Block(elem, mutable))
        }
        other => match vec_elem(other) {
            Some(syn::Type::Reference(r)) => {
                if r.mutability.is_some() {
                    return Err(syn::Error::new_spanned(
                        ty,
                        "`Vec<&mut T>` cannot be a task parameter",
                    ));
                }
                Ok(ParamShape::BorrowedVec((*r.elem).clone()))
            }
            Some(elem) => Ok(ParamShape::OwnedVec(elem.clone())),
            None => Ok(ParamShape::Owned(other.clone())),
        },
    }
}

/// `Result<T, E>` (or a one-argument `...::Result<T>` alias): the `T`.
fn result_ok_type(ty: &syn::Type) -> Option<syn::Type> {
    let syn::Type::Path(p) = ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "Result" {
        return None;
    }
    match &seg.arguments {
        syn::PathArguments::AngleBracketed(a) => match a.args.first()? {
            syn::GenericArgument::Type(t) => Some(t.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn task_entry(func: &syn::ItemFn, subst: &[(Ident, syn::Type)]) -> syn::Result<TokenStream2> {
    use syn::visit_mut::VisitMut;
    let ident = &func.sig.ident;
    let mut params = Vec::new();
    for input in &func.sig.inputs {
        match input {
            syn::FnArg::Receiver(r) => {
                return Err(syn::Error::new_spanned(
                    r,
                    "#[dagger::task] works on free functions, not methods",
                ))
            }
            syn::FnArg::Typed(t) => {
                let mut ty = (*t.ty).clone();
                Substitute(subst).visit_type_mut(&mut ty);
                params.push(ty);
            }
        }
    }
    let mut ret: syn::Type = match &func.sig.output {
        syn::ReturnType::Default => syn::parse_quote!(()),
        syn::ReturnType::Type(_, t) => (**t).clone(),
    };
    Substitute(subst).visit_type_mut(&mut ret);
    let generic_args: Vec<&syn::Type> = subst.iter().map(|(_, t)| t).collect();
    let (fn_path, name) = if subst.is_empty() {
        (quote!(#ident), ident.to_string())
    } else {
        let args = quote!(#(#generic_args),*).to_string().replace(' ', "");
        (
            quote!(#ident::<#(#generic_args),*>),
            format!("{ident}::<{args}>"),
        )
    };
    let signature = format!(
        "({}) -> {}",
        params
            .iter()
            .map(|t| quote!(#t).to_string())
            .collect::<Vec<_>>()
            .join(", "),
        quote!(#ret)
    );

    let mut param_defs = Vec::new();
    let mut fetches = Vec::new();
    let mut inputs = Vec::new();
    for (i, ty) in params.iter().enumerate() {
        let x = format_ident!("__dagger_p{}", i);
        let shape = param_shape(ty)?;
        let mutable = matches!(
            shape,
            ParamShape::BorrowedMut(_) | ParamShape::Block(_, true)
        );
        let (codec_ty, elem, fetch) = match shape {
            ParamShape::Owned(t) => (t.clone(), None, quote!(__dagger_args.take::<#t>(#i)?)),
            ParamShape::Borrowed(t) => (t.clone(), None, quote!(__dagger_args.borrow::<#t>(#i)?)),
            ParamShape::BorrowedMut(t) => {
                (t.clone(), None, quote!(__dagger_args.borrow_mut::<#t>(#i)?))
            }
            ParamShape::OwnedVec(t) => (
                syn::parse_quote!(::std::vec::Vec<#t>),
                Some(t.clone()),
                quote!(__dagger_args.take_vec::<#t>(#i)?),
            ),
            ParamShape::BorrowedVec(t) => (
                syn::parse_quote!(::std::vec::Vec<#t>),
                Some(t.clone()),
                quote!(__dagger_args.borrow_many::<#t>(#i)?),
            ),
            ParamShape::Block(t, false) => (
                syn::parse_quote!(::dagger::__private::BlockBuf<#t>),
                None,
                quote!(__dagger_args
                    .borrow::<::dagger::__private::BlockBuf<#t>>(#i)?
                    .block_ref()?),
            ),
            ParamShape::Block(t, true) => (
                syn::parse_quote!(::dagger::__private::BlockBuf<#t>),
                None,
                quote!(__dagger_args
                    .borrow_mut::<::dagger::__private::BlockBuf<#t>>(#i)?
                    .block_mut()?),
            ),
        };
        let elem = match elem {
            Some(t) => quote!(::core::option::Option::Some(::dagger::__private::Codec::of::<#t>())),
            None => quote!(::core::option::Option::None),
        };
        param_defs.push(quote!(::dagger::__private::Param {
            codec: ::dagger::__private::Codec::of::<#codec_ty>(),
            elem: #elem,
            mutable: #mutable,
        }));
        fetches.push(quote!(let #x = #fetch;));
        inputs.push(x);
    }
    let nparams = params.len();
    let (stored, fallible, finish) = match result_ok_type(&ret) {
        Some(ok) => (
            ok,
            true,
            quote!(::dagger::__private::store_fallible(__dagger_r)),
        ),
        None => (
            ret.clone(),
            false,
            quote!(::core::result::Result::Ok(
                ::dagger::__private::Stored::new(__dagger_r)
            )),
        ),
    };
    Ok(quote! {
        #[doc(hidden)]
        const _: () = {
            #[::dagger::__private::linkme::distributed_slice(::dagger::__private::TASK_FNS)]
            #[linkme(crate = ::dagger::__private::linkme)]
            static __DAGGER_TASK_FN: ::dagger::__private::TaskFn = ::dagger::__private::TaskFn {
                name: ::core::concat!(::core::module_path!(), "::", #name),
                signature: #signature,
                fn_id: __dagger_fn_id,
                params: &[#(#param_defs),*],
                result: ::dagger::__private::Codec::of::<#stored>(),
                fallible: #fallible,
                invoke: __dagger_invoke,
            };
            fn __dagger_fn_id() -> ::std::any::TypeId {
                ::dagger::__private::fn_id(&#fn_path)
            }
            #[allow(clippy::let_unit_value, unused_variables)]
            fn __dagger_invoke(
                __dagger_args: &::dagger::__private::Args<'_>,
            ) -> ::core::result::Result<::dagger::__private::Stored, ::dagger::BoxError> {
                ::dagger::__private::check_arity(__dagger_args, #nparams)?;
                #(#fetches)*
                let __dagger_r = #fn_path(#(#inputs),*);
                #finish
            }
        };
    })
}

/// Registers a function so that its tasks can run in any process of a cluster; see the
/// `dagger` crate.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    let func = syn::parse_macro_input!(item as syn::ItemFn);
    let instances = {
        let parser = Punctuated::<Instance, Token![,]>::parse_terminated;
        match syn::parse::Parser::parse(parser, attr) {
            Ok(list) => list.into_iter().collect::<Vec<_>>(),
            Err(e) => return e.to_compile_error().into(),
        }
    };
    let result = (|| -> syn::Result<TokenStream2> {
        if let Some(a) = &func.sig.asyncness {
            return Err(syn::Error::new_spanned(
                a,
                "task functions cannot be async: a task runs on a compute thread",
            ));
        }
        let type_params: Vec<&Ident> = func.sig.generics.type_params().map(|t| &t.ident).collect();
        if func.sig.generics.const_params().next().is_some() {
            return Err(syn::Error::new_spanned(
                &func.sig.generics,
                "generic task functions with const parameters are not supported",
            ));
        }
        let mut entries = Vec::new();
        if type_params.is_empty() {
            if !instances.is_empty() {
                return Err(syn::Error::new_spanned(
                    &func.sig.ident,
                    "`instance(..)` is only for generic functions",
                ));
            }
            entries.push(task_entry(&func, &[])?);
        } else {
            if instances.is_empty() {
                return Err(syn::Error::new_spanned(
                    &func.sig.generics,
                    "a generic task function needs its instances listed, e.g. \
                     #[dagger::task(instance(T = u32), instance(T = f64))]",
                ));
            }
            for inst in &instances {
                for p in &type_params {
                    if !inst.0.iter().any(|(n, _)| n == *p) {
                        return Err(syn::Error::new_spanned(
                            p,
                            format!("instance(..) does not give the type parameter `{p}`"),
                        ));
                    }
                }
                let ordered: Vec<(Ident, syn::Type)> = type_params
                    .iter()
                    .map(|p| {
                        let (n, t) = inst.0.iter().find(|(n, _)| n == *p).unwrap();
                        (n.clone(), t.clone())
                    })
                    .collect();
                entries.push(task_entry(&func, &ordered)?);
            }
        }
        Ok(quote!(#func #(#entries)*))
    })();
    match result {
        Ok(t) => t.into(),
        Err(e) => {
            let func_tokens = quote!(#func);
            let err = e.to_compile_error();
            quote!(#func_tokens #err).into()
        }
    }
}

/// Makes `main` start with `dagger::init()`; see the `dagger` crate.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = TokenStream2::from(attr);
        return syn::Error::new_spanned(attr, "#[dagger::main] takes no arguments")
            .to_compile_error()
            .into();
    }
    let mut func = syn::parse_macro_input!(item as syn::ItemFn);
    if func.sig.ident != "main" {
        return syn::Error::new_spanned(&func.sig.ident, "#[dagger::main] goes on `fn main`")
            .to_compile_error()
            .into();
    }
    if func.sig.asyncness.is_some() {
        return syn::Error::new_spanned(
            func.sig.asyncness,
            "#[dagger::main] does not start an async runtime; put it on a synchronous `fn main`",
        )
        .to_compile_error()
        .into();
    }
    let body = &func.block;
    func.block = syn::parse_quote!({
        ::dagger::__private::init_or_exit();
        #body
    });
    quote!(#func).into()
}
