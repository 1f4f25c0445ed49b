//! OCI vocabulary: digests, names and references, media types and `Accept` negotiation.
//! Pure parsing, no I/O; everything that crosses a trust boundary is parsed here once.

pub mod digest;
pub mod media;
pub mod name;
pub mod schema1;

pub use digest::{Digest, truncate_for_message};
pub use media::ClientAccept;
pub use name::{Reference, RepoName, Tag};
