//! placeholder until the sshd helper lands
