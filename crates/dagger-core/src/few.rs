//! A few items, held without an allocation while there is only one.

/// Items of a batch, held in place while there is at most one: most batches of reports a
/// worker releases, and of early reports the head takes, hold a single one.
pub(crate) enum Few<T> {
    None,
    One(T),
    Many(Vec<T>),
}

impl<T> Few<T> {
    pub(crate) fn push(&mut self, item: T) {
        *self = match std::mem::replace(self, Few::None) {
            Few::None => Few::One(item),
            Few::One(first) => Few::Many(vec![first, item]),
            Few::Many(mut items) => {
                items.push(item);
                Few::Many(items)
            }
        };
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Few::None => true,
            Few::One(_) => false,
            Few::Many(items) => items.is_empty(),
        }
    }
}

impl<T> From<Vec<T>> for Few<T> {
    fn from(items: Vec<T>) -> Self {
        Few::Many(items)
    }
}

impl<T> IntoIterator for Few<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::vec::IntoIter<T>>;

    fn into_iter(self) -> Self::IntoIter {
        let (one, many) = match self {
            Few::None => (None, Vec::new()),
            Few::One(item) => (Some(item), Vec::new()),
            Few::Many(items) => (None, items),
        };
        one.into_iter().chain(many)
    }
}

#[cfg(test)]
mod tests {
    use super::Few;

    #[test]
    fn few_items_come_back_in_the_order_pushed() {
        for n in 0..5 {
            let mut few = Few::None;
            assert!(few.is_empty());
            for i in 0..n {
                few.push(i);
            }
            assert_eq!(few.is_empty(), n == 0);
            assert_eq!(
                few.into_iter().collect::<Vec<_>>(),
                (0..n).collect::<Vec<_>>()
            );
        }
        assert!(Few::<u8>::from(Vec::new()).is_empty());
        assert_eq!(
            Few::from(vec![1, 2]).into_iter().collect::<Vec<_>>(),
            [1, 2]
        );
    }
}
