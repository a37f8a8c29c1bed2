pub mod model;
pub mod rawtar;
