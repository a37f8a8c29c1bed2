pub mod rawtar;
