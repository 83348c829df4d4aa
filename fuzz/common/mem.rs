//! An in-memory block device shared by the SCSI and session targets.
use bytes::Bytes;
use isboot::store::{BlockDevice, Segment, StoreError};
use std::sync::Mutex;

pub struct Mem(pub Mutex<Vec<u8>>);

impl Mem {
    pub fn new(len: usize) -> Mem {
        Mem(Mutex::new(vec![0u8; len]))
    }
}

impl BlockDevice for Mem {
    fn size(&self) -> u64 {
        self.0.lock().unwrap().len() as u64
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, offset: u64, len: usize, out: &mut Vec<Segment>) -> Result<(), StoreError> {
        self.check_range(offset, len as u64)?;
        let d = self.0.lock().unwrap();
        out.push(Bytes::copy_from_slice(&d[offset as usize..offset as usize + len]).into());
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8], _durable: bool) -> Result<(), StoreError> {
        self.check_range(offset, data.len() as u64)?;
        let mut d = self.0.lock().unwrap();
        d[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<(), StoreError> {
        self.check_range(offset, len)?;
        let mut d = self.0.lock().unwrap();
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }
}
