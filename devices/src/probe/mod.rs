//! `vhost-probe`: a front-end that connects to any vhost-user back-end.
